//! Rate limiting by client IP, a header, or a claim that `auth` forwarded as
//! a header (so `auth` must come first in the chain for that). The buckets
//! live in the host and are shared by every request. The config is
//! documented in this crate's README.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use cascade_filter::client::{ClientKey, is_token};
use cascade_filter::{Decision, Filter, Reply, Request, Verdict, export_filter, log, rate_limit};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The host policy (`[rate_limits.<name>]`) to use by default.
    policy: String,
    /// What identifies a client: `"ip"` or `"header:<name>"`. A missing
    /// header falls back to the client IP.
    #[serde(default)]
    key: ClientKey,
    /// Quota tiers: the value of `header` (a plan claim `auth` forwarded,
    /// say), or without one the client's key itself, picks the policy.
    #[serde(default)]
    tiers: Option<Tiers>,
    /// Units one request takes.
    #[serde(default = "one")]
    cost: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tiers {
    #[serde(default)]
    header: Option<String>,
    policies: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

#[derive(Clone)]
pub struct RateLimit {
    /// Shared, not copied, by each request's clone.
    config: Rc<Config>,
}

impl Filter for RateLimit {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.cost == 0 {
            return Err("cost must be at least 1".into());
        }
        if let Some(header) = config.tiers.as_ref().and_then(|t| t.header.as_ref())
            && !is_token(header)
        {
            return Err(format!("tiers.header {header:?} is not a header name"));
        }
        // A policy's name goes into the RateLimit headers as a quoted string.
        if let Some(name) =
            policies(&config).find(|p| p.bytes().any(|b| b == b'"' || b == b'\\' || !(b' '..=b'~').contains(&b)))
        {
            return Err(format!("policy name {name:?} must be printable ASCII without '\"' or '\\'"));
        }
        Ok(Self { config: Rc::new(config) })
    }

    /// Every policy the config names must exist in the host, with a burst of
    /// at least `cost`. (While it checks a config, the host takes nothing.)
    fn check(&self) -> Result<(), String> {
        for policy in policies(&self.config) {
            rate_limit::check(policy, "", self.config.cost).map_err(|e| format!("policy {policy:?}: {e}"))?;
        }
        Ok(())
    }

    fn on_request(&mut self, req: &Request) -> Verdict {
        let key = self.config.key.bucket(req);
        let tier = |t: &Tiers| match &t.header {
            Some(header) => req.header(header).and_then(|value| t.policies.get(&value).cloned()),
            None => {
                // Tiers keyed by address are for clients counted by address:
                // a header value that spells one is no address, or a client
                // could send a partner's as its key (buckets keep the two
                // apart the same way, see `ClientKey::bucket`).
                let value = self.config.key.resolve(req);
                let from_header = matches!(&self.config.key, ClientKey::Header(name) if req.header(name).is_some());
                let spells_an_address = value.parse::<std::net::IpAddr>().is_ok();
                t.policies.get(&value).filter(|_| !(from_header && spells_an_address)).cloned()
            }
        };
        let policy = self.config.tiers.as_ref().and_then(tier).unwrap_or_else(|| self.config.policy.clone());
        // `check` refused an unknown policy at load; a host that lost one
        // since is a bug for the route's on_error.
        let decision = rate_limit::check(&policy, &key, self.config.cost).unwrap_or_else(|e| panic!("rate-limit: {e}"));
        // Staged, the headers go on whatever answers, the 429 below included,
        // and this filter needs no on_response: its instance is free as soon
        // as this returns.
        stage_headers(req, &policy, &decision);
        if decision.allowed {
            return Verdict::Continue;
        }
        let retry_after = decision.retry_after.as_millis().div_ceil(1000).max(1);
        Verdict::Respond(
            Reply::new(429)
                .header("retry-after", retry_after.to_string())
                .header("content-type", "application/json")
                .body(format!("{{\"error\":\"rate limited\",\"retry_after_secs\":{retry_after}}}")),
        )
    }
}

/// The default policy and every tier's.
fn policies(config: &Config) -> impl Iterator<Item = &String> {
    std::iter::once(&config.policy).chain(config.tiers.iter().flat_map(|t| t.policies.values()))
}

/// The RateLimit headers for the response, from draft-ietf-httpapi-ratelimit-headers:
/// q is the quota, w the window in which it refills, r what is left, t the
/// seconds until it is full.
fn stage_headers(req: &Request, policy: &str, d: &Decision) {
    let window = seconds_up(d.window).max(1);
    let policy_header = structured(policy, [("q", u64::from(d.limit)), ("w", window)]);
    let state_header = structured(policy, [("r", u64::from(d.remaining)), ("t", seconds_up(d.reset_after))]);
    // Both fields are lists, one member per policy: added, so that two
    // limits on one route (per address, then per user) both show, and the
    // one that refused is among them. Advisory: the decision stands even if
    // the host refuses a header (a chain entry with a very low
    // `max_headers`, say).
    for (name, value) in [("ratelimit-policy", policy_header), ("ratelimit", state_header)] {
        if let Err(e) = req.add_response_header(name, &value) {
            log::warn(&format!("{name} not sent: {e}"));
        }
    }
}

/// Whole seconds, rounded up; less than a millisecond is ignored.
fn seconds_up(duration: Duration) -> u64 {
    let millis = duration.as_secs().saturating_mul(1000).saturating_add(u64::from(duration.subsec_millis()));
    millis.div_ceil(1000)
}

/// `"policy";k1=v1;k2=v2`, a structured-field item with its parameters.
/// (Built by hand: `format!` costs about 2,000 instructions in a guest, and
/// an integer's `to_string` several hundred.)
fn structured(policy: &str, params: [(&str, u64); 2]) -> String {
    let mut out = String::with_capacity(policy.len() + 48);
    out.extend(["\"", policy, "\""]);
    for (key, value) in params {
        out.extend([";", key, "="]);
        push_decimal(&mut out, value);
    }
    out
}

fn push_decimal(out: &mut String, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[start..]).expect("ASCII digits"));
}

export_filter!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_filter::Response;
    use cascade_filter::mock::rate_limit::set_policy;
    use cascade_filter::{check_config, instantiate};

    #[test]
    fn numbers_and_seconds_are_written_as_they_should() {
        let mut out = String::new();
        for n in [0, 7, 10, 1234, u64::MAX] {
            out.clear();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string());
        }
        assert_eq!(seconds_up(Duration::ZERO), 0);
        assert_eq!(seconds_up(Duration::from_millis(1)), 1);
        assert_eq!(seconds_up(Duration::from_millis(1000)), 1);
        assert_eq!(seconds_up(Duration::from_millis(1001)), 2);
        assert_eq!(seconds_up(Duration::from_micros(1_000_500)), 1, "below a millisecond is not counted");
    }

    fn filter(config: &str) -> RateLimit {
        instantiate::<RateLimit>(config).unwrap()
    }

    #[test]
    fn refuses_past_the_burst_with_retry_after_and_headers() {
        set_policy("std", 2);
        // The mock refills one unit a second: the window is the burst in
        // seconds, and the bucket is full again after a second per unit used.
        for (remaining, reset) in [(1, 1), (0, 2)] {
            let req = Request::new("GET", "/");
            assert_eq!(filter(r#"{"policy": "std"}"#).on_request(&req), Verdict::Continue);
            let resp = req.respond_to(Response::new(200));
            assert_eq!(resp.header("ratelimit-policy").as_deref(), Some("\"std\";q=2;w=2"));
            assert_eq!(resp.header("ratelimit"), Some(format!("\"std\";r={remaining};t={reset}")));
        }
        let req = Request::new("GET", "/");
        let Verdict::Respond(reply) = filter(r#"{"policy": "std"}"#).on_request(&req) else {
            panic!("third request should be refused");
        };
        assert_eq!(reply.status, 429);
        assert_eq!(reply.header_value("retry-after"), Some("1"));
        // The refusal carries the headers too: the host puts them on the reply.
        let resp = req.respond_to(Response::new(reply.status));
        assert_eq!(resp.header("ratelimit").as_deref(), Some("\"std\";r=0;t=2"));
        // Another client has its own bucket.
        let other = Request::new("GET", "/").with_client_ip("10.0.0.9");
        assert_eq!(filter(r#"{"policy": "std"}"#).on_request(&other), Verdict::Continue);
    }

    #[test]
    fn keys_by_header_and_tiers_by_header() {
        set_policy("free", 1);
        set_policy("gold", 3);
        let config = r#"{"policy": "free", "key": "header:x-user-id",
            "tiers": {"header": "x-user-plan", "policies": {"gold": "gold"}}}"#;
        let gold = || Request::new("GET", "/").with_header("x-user-id", "alice").with_header("x-user-plan", "gold");
        for _ in 0..3 {
            assert_eq!(filter(config).on_request(&gold()), Verdict::Continue);
        }
        assert!(matches!(filter(config).on_request(&gold()), Verdict::Respond(_)));
        let free = Request::new("GET", "/").with_header("x-user-id", "bob");
        assert_eq!(filter(config).on_request(&free), Verdict::Continue);
        let free = Request::new("GET", "/").with_header("x-user-id", "bob");
        assert!(matches!(filter(config).on_request(&free), Verdict::Respond(_)));
    }

    #[test]
    fn tiers_by_the_key_itself() {
        set_policy("anonymous", 1);
        set_policy("partner", 3);
        let config = r#"{"policy": "anonymous", "tiers": {"policies": {"203.0.113.7": "partner"}}}"#;
        let partner = || Request::new("GET", "/").with_client_ip("203.0.113.7");
        for _ in 0..3 {
            assert_eq!(filter(config).on_request(&partner()), Verdict::Continue);
        }
        assert!(matches!(filter(config).on_request(&partner()), Verdict::Respond(_)));
        let other = || Request::new("GET", "/").with_client_ip("198.51.100.1");
        assert_eq!(filter(config).on_request(&other()), Verdict::Continue);
        assert!(matches!(filter(config).on_request(&other()), Verdict::Respond(_)));

        // Keyed by a header: the partner's address is its tier only as the
        // address a request without the header comes from, not as a header
        // value another client sends.
        set_policy("anonymous", 1);
        set_policy("partner", 3);
        let config = r#"{"policy": "anonymous", "key": "header:x-api-key",
            "tiers": {"policies": {"203.0.113.7": "partner", "key-1": "partner"}}}"#;
        let posing = || Request::new("GET", "/").with_client_ip("198.51.100.9").with_header("x-api-key", "203.0.113.7");
        assert_eq!(filter(config).on_request(&posing()), Verdict::Continue);
        assert!(matches!(filter(config).on_request(&posing()), Verdict::Respond(_)), "took the partner's tier");
        let by_key = || Request::new("GET", "/").with_client_ip("198.51.100.9").with_header("x-api-key", "key-1");
        for _ in 0..3 {
            assert_eq!(filter(config).on_request(&by_key()), Verdict::Continue, "a key's own tier");
        }
        for _ in 0..3 {
            assert_eq!(
                filter(config).on_request(&partner()),
                Verdict::Continue,
                "the address's tier, without the header"
            );
        }
    }

    #[test]
    fn bad_key_is_refused() {
        assert!(instantiate::<RateLimit>(r#"{"policy": "p", "key": "cookie:x"}"#).is_err());
        // A name no header has would never match: every client would count
        // by address, or by the default policy, without a word.
        let error = |config| instantiate::<RateLimit>(config).err().unwrap();
        assert!(error(r#"{"policy": "p", "key": "header: x-user-id"}"#).contains("not a header name"));
        let tiers = r#"{"policy": "p", "tiers": {"header": "x plan", "policies": {"gold": "g"}}}"#;
        assert!(error(tiers).contains("tiers.header"));
    }

    #[test]
    fn two_limits_on_one_route_both_show() {
        set_policy("per-ip", 5);
        set_policy("per-user", 1);
        let by_ip = filter(r#"{"policy": "per-ip"}"#);
        let by_user = filter(r#"{"policy": "per-user", "key": "header:x-user-id"}"#);
        let req = || Request::new("GET", "/").with_header("x-user-id", "carol");
        let first = req();
        assert_eq!(by_ip.clone().on_request(&first), Verdict::Continue);
        assert_eq!(by_user.clone().on_request(&first), Verdict::Continue);
        let second = req();
        assert_eq!(by_ip.clone().on_request(&second), Verdict::Continue);
        let Verdict::Respond(reply) = by_user.clone().on_request(&second) else { panic!("the user's limit refuses") };
        let resp = second.respond_to(Response::new(reply.status));
        assert_eq!(resp.header_values("ratelimit"), ["\"per-ip\";r=3;t=2", "\"per-user\";r=0;t=1"]);
        assert_eq!(resp.header_values("ratelimit-policy").len(), 2);
    }

    #[test]
    fn policies_and_cost_are_checked_at_load() {
        set_policy("small", 2);
        set_policy("big", 10);
        assert_eq!(check_config::<RateLimit>(r#"{"policy": "small", "cost": 2}"#), Ok(()));
        // The check took nothing: the bucket of its key ("") is whole.
        let req = Request::new("GET", "/").with_client_ip("");
        assert_eq!(filter(r#"{"policy": "small", "cost": 2}"#).on_request(&req), Verdict::Continue);
        for (config, why) in [
            (r#"{"policy": "typo"}"#, "policy \"typo\""),
            (r#"{"policy": "small", "tiers": {"policies": {"gold": "gold-typo"}}}"#, "policy \"gold-typo\""),
            (r#"{"policy": "big", "tiers": {"policies": {"x": "small"}}, "cost": 5}"#, "policy \"small\""),
            (r#"{"policy": "small", "cost": 0}"#, "at least 1"),
            (r#"{"policy": "a\"b"}"#, "printable ASCII"),
        ] {
            let error = check_config::<RateLimit>(config).unwrap_err();
            assert!(error.contains(why), "{config}: {error}");
        }
    }

    #[test]
    fn header_values_and_addresses_never_share_a_bucket() {
        set_policy("one", 1);
        let config = r#"{"policy": "one", "key": "header:x-api-key"}"#;
        // A client without the header is keyed by its address...
        let anonymous = Request::new("GET", "/").with_client_ip("203.0.113.7");
        assert_eq!(filter(config).on_request(&anonymous), Verdict::Continue);
        // ...which another client cannot drain by sending it as its key.
        let posing = Request::new("GET", "/").with_client_ip("198.51.100.1").with_header("x-api-key", "203.0.113.7");
        assert_eq!(filter(config).on_request(&posing), Verdict::Continue);
        let posing = Request::new("GET", "/").with_client_ip("198.51.100.1").with_header("x-api-key", "ip:203.0.113.7");
        assert_eq!(filter(config).on_request(&posing), Verdict::Continue);
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64() {
        set_policy("v6", 1);
        let config = r#"{"policy": "v6"}"#;
        let from = |ip: &str| Request::new("GET", "/").with_client_ip(ip);
        assert_eq!(filter(config).on_request(&from("2001:db8:1:2::1")), Verdict::Continue);
        assert!(matches!(filter(config).on_request(&from("2001:db8:1:2:ffff::9")), Verdict::Respond(_)));
        assert_eq!(filter(config).on_request(&from("2001:db8:1:3::1")), Verdict::Continue);
        // IPv4, mapped or not, keeps the whole address.
        assert_eq!(filter(config).on_request(&from("::ffff:192.0.2.1")), Verdict::Continue);
        assert_eq!(filter(config).on_request(&from("::ffff:192.0.2.2")), Verdict::Continue);
    }
}
