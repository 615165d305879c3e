//! Sticky, weighted A/B assignment. A client keeps the variant in its
//! cookie; without one, a deterministic hash of a key (the client IP or a
//! header such as a user id) picks it, and the cookie is set on the way out.
//! The config is documented in this crate's README.

use std::rc::Rc;

use cascade_filter::client::{ClientKey, check_cookie_name, check_header, cookie};
use cascade_filter::path::check_prefix;
use cascade_filter::{Filter, Request, Verdict, export_filter, log, upstreams};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The experiment's name; it seeds the hash and names the cookie.
    experiment: String,
    variants: Vec<Variant>,
    /// Cookie holding the assignment; defaults to `ab-<experiment>`.
    #[serde(default)]
    cookie: Option<String>,
    /// `"ip"` or `"header:<name>"`; a missing header falls back to the IP.
    #[serde(default)]
    key: ClientKey,
    /// The request header that tells the origin the variant.
    #[serde(default = "variant_header")]
    header: String,
    #[serde(default = "thirty_days")]
    cookie_max_age_secs: u64,
    /// Mark the cookie `Secure`, for a site served only over HTTPS.
    #[serde(default)]
    cookie_secure: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Variant {
    name: String,
    weight: u32,
    /// Send this variant's requests to another upstream group.
    #[serde(default)]
    upstream: Option<String>,
    /// Put this prefix in front of the path for this variant.
    #[serde(default)]
    path_prefix: Option<String>,
}

fn variant_header() -> String {
    "x-ab-variant".into()
}

fn thirty_days() -> u64 {
    30 * 24 * 3600
}

#[derive(Clone)]
pub struct AbTest {
    /// The config and cookie name are shared, not copied, by each request's clone.
    config: Rc<Config>,
    cookie: Rc<str>,
    /// What follows `name=variant` in the cookie, the same on every response.
    cookie_attributes: Rc<str>,
}

/// A 64-bit FNV-1a hash with a final avalanche, so nearby keys spread evenly.
/// Deterministic across hosts, versions and restarts.
pub fn bucket_hash(experiment: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in experiment.bytes().chain([0]).chain(key.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64 finalizer
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl AbTest {
    /// The variant for `key`, by weight.
    fn assign(&self, key: &str) -> usize {
        let total: u64 = self.config.variants.iter().map(|v| u64::from(v.weight)).sum();
        let mut point = bucket_hash(&self.config.experiment, key) % total;
        for (i, v) in self.config.variants.iter().enumerate() {
            if point < u64::from(v.weight) {
                return i;
            }
            point -= u64::from(v.weight);
        }
        unreachable!("point < total weight")
    }

    /// The variant the cookie names, if it is one that still takes traffic:
    /// a variant set to weight 0 is switched off, for clients it already has
    /// as well as for new ones.
    fn variant_in_cookie(&self, req: &Request) -> Option<usize> {
        let value = cookie(req, &self.cookie)?;
        self.config.variants.iter().position(|v| v.name == value && v.weight > 0)
    }
}

impl Filter for AbTest {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.variants.is_empty() || config.variants.iter().all(|v| v.weight == 0) {
            return Err("at least one variant needs a weight above 0".into());
        }
        for v in &config.variants {
            if v.name.is_empty() || !v.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(format!("variant name {:?} must be letters, digits, '-' or '_'", v.name));
            }
            if let Some(prefix) = &v.path_prefix {
                check_prefix(prefix).map_err(|e| format!("variant {:?}: path_prefix {e}", v.name))?;
            }
        }
        check_header(&config.header, "").map_err(|e| format!("header: {e}"))?;
        let cookie = config.cookie.clone().unwrap_or_else(|| format!("ab-{}", config.experiment));
        check_cookie_name(&cookie).map_err(|e| format!("{e} (set `cookie`, or rename `experiment`)"))?;
        // Browsers drop a cookie with either prefix unless it is `Secure`.
        if (cookie.starts_with("__Secure-") || cookie.starts_with("__Host-")) && !config.cookie_secure {
            return Err(format!("cookie {cookie:?} needs `cookie_secure = true`, or browsers drop it"));
        }
        let secure = if config.cookie_secure { "; Secure" } else { "" };
        let cookie_attributes =
            format!("; Path=/; Max-Age={}; SameSite=Lax; HttpOnly{secure}", config.cookie_max_age_secs);
        Ok(Self { config: Rc::new(config), cookie: Rc::from(cookie), cookie_attributes: Rc::from(cookie_attributes) })
    }

    /// A variant's upstream must be a group of the proxy's config: a
    /// misspelt one is refused when the route loads, not left to fail each
    /// request of the clients assigned to it (sticky, so always the same).
    fn check(&self) -> Result<(), String> {
        let groups = upstreams::groups();
        for variant in &self.config.variants {
            if let Some(upstream) = variant.upstream.as_ref().filter(|u| !groups.contains(u)) {
                return Err(format!(
                    "variant {:?}: upstream {upstream:?} is not a group of the proxy's config (it has {})",
                    variant.name,
                    groups.join(", ")
                ));
            }
        }
        Ok(())
    }

    fn on_request(&mut self, req: &Request) -> Verdict {
        let index = match self.variant_in_cookie(req) {
            Some(index) => index,
            None => {
                let index = self.assign(&self.config.key.resolve(req));
                // The response, whatever gives it, sets the cookie; staged
                // now, it needs no on_response. Without the cookie the key
                // still keeps the client on its variant, so a refusal (a very
                // low `max_headers`) is only logged.
                let name = &self.config.variants[index].name;
                let cookie = [&self.cookie, "=", name, &self.cookie_attributes].concat();
                if let Err(e) = req.add_response_header("set-cookie", &cookie) {
                    log::warn(&format!("cookie not set: {e}"));
                }
                index
            }
        };
        let variant = &self.config.variants[index];
        if let Err(refused) = req.set_header(&self.config.header, &variant.name) {
            return Verdict::refused_edit(refused);
        }
        if let Some(upstream) = &variant.upstream {
            // An unknown group is a config bug: trap, and let on_error decide.
            req.set_upstream(upstream).unwrap_or_else(|e| panic!("ab-test: {e}"));
        }
        if let Some(prefix) = &variant.path_prefix {
            let path = format!("{}{}", prefix.trim_end_matches('/'), req.path());
            req.set_path(&path).unwrap_or_else(|e| panic!("ab-test: {e}"));
        }
        Verdict::Continue
    }
}

export_filter!(AbTest);

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_filter::{Response, check_config, instantiate};

    const CONFIG: &str = r#"{"experiment": "checkout", "key": "header:x-user-id", "variants": [
        {"name": "control", "weight": 70},
        {"name": "new", "weight": 30, "upstream": "canary", "path_prefix": "/b"}]}"#;

    fn request(user: &str) -> Request {
        Request::new("GET", "/cart").with_header("x-user-id", user).with_upstreams(&["origin", "canary"])
    }

    /// 10,000 keys, weights 70/30. The count of `new` is binomial with
    /// n = 10,000 and p = 0.3: mean 3,000, standard deviation 45.8. The bound
    /// is 4 standard deviations (±183), which a fair hash passes with
    /// probability 0.99994; the hash is deterministic, so the result is too.
    #[test]
    fn split_matches_weights_over_ten_thousand_keys() {
        let f = instantiate::<AbTest>(CONFIG).unwrap();
        let new = (0..10_000).filter(|i| f.assign(&format!("user-{i}")) == 1).count() as i64;
        assert!((new - 3_000).abs() <= 183, "{new} of 10000 assigned to `new`");
    }

    /// A request with as many headers as the host lets a filter leave gets
    /// a 431, not a trap (which a client could repeat until the route's
    /// breaker opened); cookie lines count as one, as at admission.
    #[test]
    fn a_request_at_the_header_count_gets_431() {
        let mut f = instantiate::<AbTest>(CONFIG).unwrap();
        let full = (0..255).fold(request("u1"), |req, i| req.with_header(&format!("x-h{i}"), "1"));
        let Verdict::Respond(reply) = f.on_request(&full) else { panic!("a full request went on") };
        assert_eq!(reply.status, 431);
        let cookies = (0..300).fold(request("u1"), |req, _| req.with_header("cookie", "a=1"));
        assert_eq!(f.on_request(&cookies), Verdict::Continue, "cookie lines counted one by one");
    }

    #[test]
    fn an_upstream_the_proxy_lacks_is_refused_at_load() {
        upstreams::set_groups(&["origin", "canary"]);
        assert_eq!(check_config::<AbTest>(CONFIG), Ok(()));
        let error = check_config::<AbTest>(&CONFIG.replace("\"canary\"", "\"canry\"")).unwrap_err();
        assert!(error.contains("upstream \"canry\" is not a group") && error.contains("origin, canary"), "{error}");
    }

    #[test]
    fn a_path_prefix_no_path_can_have_is_refused() {
        let config = CONFIG.replace("\"/b\"", "\"/next?x\"");
        let error = instantiate::<AbTest>(&config).err().unwrap();
        assert!(error.contains("variant \"new\": path_prefix \"/next?x\" holds '?'"), "{error}");
    }

    #[test]
    fn assignment_is_sticky_by_key_and_by_cookie() {
        for i in 0..200 {
            let user = format!("user-{i}");
            let mut first = instantiate::<AbTest>(CONFIG).unwrap();
            let req = request(&user);
            first.on_request(&req);
            let variant = req.header("x-ab-variant").unwrap();
            let resp = req.respond_to(Response::new(200));
            let set_cookie = resp.header("set-cookie").unwrap();
            let expected = format!("ab-checkout={variant}; Path=/; Max-Age=2592000; SameSite=Lax; HttpOnly");
            assert_eq!(set_cookie, expected);

            // Same key again: same variant.
            let again = request(&user);
            instantiate::<AbTest>(CONFIG).unwrap().on_request(&again);
            assert_eq!(again.header("x-ab-variant").unwrap(), variant);

            // With the cookie, the key no longer matters and no cookie is set.
            let mut with_cookie = instantiate::<AbTest>(CONFIG).unwrap();
            let req = request("someone-else").with_header("cookie", &format!("ab-checkout={variant}"));
            with_cookie.on_request(&req);
            assert_eq!(req.header("x-ab-variant").unwrap(), variant);
            let resp = req.respond_to(Response::new(200));
            assert_eq!(resp.header("set-cookie"), None);
        }
    }

    #[test]
    fn variant_picks_upstream_and_prefix() {
        let mut f = instantiate::<AbTest>(CONFIG).unwrap();
        let req = request("x").with_header("cookie", "ab-checkout=new");
        f.on_request(&req);
        assert_eq!(req.upstream(), "canary");
        assert_eq!(req.path(), "/b/cart");
    }

    #[test]
    fn a_cookie_for_a_switched_off_variant_is_reassigned() {
        let config = r#"{"experiment": "checkout", "variants": [
            {"name": "control", "weight": 1}, {"name": "new", "weight": 0}]}"#;
        let mut f = instantiate::<AbTest>(config).unwrap();
        let req = request("x").with_header("cookie", "ab-checkout=new");
        f.on_request(&req);
        assert_eq!(req.header("x-ab-variant").as_deref(), Some("control"));
        let resp = req.respond_to(Response::new(200));
        assert!(resp.header("set-cookie").unwrap().starts_with("ab-checkout=control;"));
    }

    #[test]
    fn the_cookie_name_must_be_a_token_and_secure_is_an_option() {
        let bad_experiment = r#"{"experiment": "check out", "variants": [{"name": "a", "weight": 1}]}"#;
        assert!(instantiate::<AbTest>(bad_experiment).err().unwrap().contains("HTTP token"));
        let bad_cookie = r#"{"experiment": "e", "cookie": "ab;x", "variants": [{"name": "a", "weight": 1}]}"#;
        assert!(instantiate::<AbTest>(bad_cookie).err().unwrap().contains("HTTP token"));
        let bad_header = r#"{"experiment": "e", "header": "x variant", "variants": [{"name": "a", "weight": 1}]}"#;
        assert!(instantiate::<AbTest>(bad_header).err().unwrap().starts_with("header: "));

        let prefixed = r#"{"experiment": "e", "cookie": "__Host-ab", "variants": [{"name": "a", "weight": 1}]}"#;
        assert!(instantiate::<AbTest>(prefixed).err().unwrap().contains("cookie_secure"));

        let secure = r#"{"experiment": "e", "cookie_secure": true, "variants": [{"name": "a", "weight": 1}]}"#;
        let req = request("x");
        instantiate::<AbTest>(secure).unwrap().on_request(&req);
        let resp = req.respond_to(Response::new(200));
        assert!(resp.header("set-cookie").unwrap().ends_with("; HttpOnly; Secure"));
    }

    #[test]
    fn forged_cookie_is_reassigned() {
        let mut f = instantiate::<AbTest>(CONFIG).unwrap();
        let req = request("x").with_header("cookie", "ab-checkout=admin");
        f.on_request(&req);
        assert_ne!(req.header("x-ab-variant").as_deref(), Some("admin"));
        let resp = req.respond_to(Response::new(200));
        assert!(resp.header("set-cookie").is_some(), "a new assignment sets the cookie");
    }
}
