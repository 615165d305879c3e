//! Subrequest authorization, as nginx's `auth_request` does it: before a
//! request goes on, ask an auth service (an upstream group this chain entry
//! was granted in `outbound`) with the request's credentials. A 2xx lets it
//! through, with the identity headers the service answered; a 401 or 403 is
//! the client's answer. The config is documented in this crate's README.

use std::rc::Rc;

use cascade_filter::client::check_header;
use cascade_filter::{
    FetchError, Filter, OutboundRequest, OutboundResponse, Reply, Request, Verdict, export_filter, log, outbound,
    upstreams,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The upstream group of the auth service.
    upstream: String,
    /// The path asked, with any query.
    #[serde(default = "default_path")]
    path: String,
    /// The client's headers sent along, as the service needs them.
    #[serde(default = "default_forwarded")]
    forward_headers: Vec<String>,
    /// Headers of a 2xx answer set on the request for the origin (the
    /// user's id, say). A client's own copies are always removed.
    #[serde(default)]
    identity_headers: Vec<String>,
    /// When the service is down (unreachable, no answer in time, or a
    /// 502, 503 or 504): let the request through without identity
    /// headers, instead of answering 503. Any other failure (a status the
    /// filter does not expect, a fetch the host refused: a mistake in the
    /// config) is a 500 either way.
    #[serde(default)]
    allow_when_unavailable: bool,
}

fn default_path() -> String {
    "/auth".into()
}

fn default_forwarded() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}

/// Fields of the subrequest that are the host's, not a client's.
const HOST_SET: [&str; 3] = ["host", "x-request-id", "cdn-loop"];

/// The headers a refusal carries over from the service's answer.
const REFUSAL_HEADERS: [&str; 2] = ["www-authenticate", "content-type"];

/// The config is shared, not copied, by each request's clone.
#[derive(Clone)]
pub struct AuthRequest(Rc<Config>);

impl Filter for AuthRequest {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if !config.path.starts_with('/') {
            return Err(format!("path {:?} must start with '/'", config.path));
        }
        for name in config.forward_headers.iter().chain(&config.identity_headers) {
            check_header(name, "").map_err(|e| format!("header {name:?}: {e}"))?;
        }
        // The host writes these on a fetch, or takes them once: a client
        // must not choose them for the subrequest.
        if let Some(name) = config.forward_headers.iter().find(|n| HOST_SET.iter().any(|h| n.eq_ignore_ascii_case(h))) {
            return Err(format!("forward_headers: {name:?} is the host's to set on the subrequest"));
        }
        Ok(Self(Rc::new(config)))
    }

    fn check(&self) -> Result<(), String> {
        let upstream = &self.0.upstream;
        if !upstreams::groups().contains(upstream) {
            return Err(format!("upstream {upstream:?} is not configured in [upstreams]"));
        }
        Ok(())
    }

    fn on_request(&mut self, req: &Request) -> Verdict {
        let config = &*self.0;
        // Identity headers come from the service only: never the client's.
        for name in &config.identity_headers {
            req.remove_header(name);
        }
        let answer = outbound::fetch(&config.upstream, self.subrequest(req));
        match answer {
            Ok(answer) if (200..300).contains(&answer.status) => {
                for name in &config.identity_headers {
                    if let Some(value) = answer.header(name)
                        && let Err(e) = req.set_header(name, value)
                    {
                        return Verdict::refused_edit(e);
                    }
                }
                Verdict::Continue
            }
            Ok(answer) if matches!(answer.status, 401 | 403) => Verdict::Respond(refusal(answer)),
            Ok(answer) if matches!(answer.status, 502..=504) => self.down(&format!("answered {}", answer.status)),
            Err(e @ (FetchError::Unreachable(_) | FetchError::Timeout)) => self.down(&describe(&e)),
            Ok(answer) => self.misconfigured(&format!("answered {}", answer.status)),
            Err(e) => self.misconfigured(&describe(&e)),
        }
    }
}

impl AuthRequest {
    /// The question for the service: the client's credentials, and what
    /// it asked for (the headers nginx's users know).
    fn subrequest(&self, req: &Request) -> OutboundRequest {
        let config = &*self.0;
        let uri = match req.query() {
            Some(query) => format!("{}?{query}", req.path()),
            None => req.path(),
        };
        let mut ask = OutboundRequest::new("GET", &config.path)
            .with_header("x-original-method", &req.method())
            .with_header("x-original-uri", &uri);
        for name in &config.forward_headers {
            for value in req.header_values(name) {
                ask = ask.with_header(name, &value);
            }
        }
        ask
    }

    /// The service is down: a 503, or a pass without identity if allowed.
    fn down(&self, why: &str) -> Verdict {
        let config = &*self.0;
        log::warn(&format!("auth service {:?} is unavailable: {why}", config.upstream));
        if config.allow_when_unavailable {
            return Verdict::Continue;
        }
        Verdict::Respond(Reply::new(503).header("content-type", "text/plain").body("authorization unavailable\n"))
    }

    /// The service answered what it should not, or the host refused the
    /// fetch: a mistake that no request passes, whatever the config allows.
    fn misconfigured(&self, why: &str) -> Verdict {
        log::error(&format!("auth service {:?}: {why}", self.0.upstream));
        Verdict::Respond(Reply::new(500).header("content-type", "text/plain").body("authorization failed\n"))
    }
}

/// The client's answer to a refusal: the service's status, challenge and body.
fn refusal(answer: OutboundResponse) -> Reply {
    let mut reply = Reply::new(answer.status);
    for name in REFUSAL_HEADERS {
        if let Some(value) = answer.header(name) {
            reply = reply.header(name, value);
        }
    }
    reply.body(answer.body)
}

fn describe(e: &FetchError) -> String {
    format!("no answer ({e})")
}

export_filter!(AuthRequest);

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_filter::mock::{outbound as mock_outbound, upstreams as mock_upstreams};
    use cascade_filter::{check_config, instantiate};

    const CONFIG: &str = r#"{"upstream": "auth", "path": "/check", "identity_headers": ["x-user"]}"#;

    fn answer(status: u16, headers: &[(&str, &str)]) -> OutboundResponse {
        OutboundResponse {
            status,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: b"why".to_vec(),
        }
    }

    #[test]
    fn a_2xx_lets_the_request_on_with_the_services_identity_and_not_the_clients() {
        mock_outbound::grant("auth", |_| Ok(answer(204, &[("x-user", "alice")])));
        let req = Request::new("POST", "/api/x?y=1")
            .with_header("authorization", "Bearer t")
            .with_header("x-user", "mallory")
            .with_header("x-other", "kept out of the subrequest");
        let mut filter = instantiate::<AuthRequest>(CONFIG).unwrap();
        assert_eq!(filter.on_request(&req), Verdict::Continue);
        assert_eq!(req.header_values("x-user"), ["alice"]);

        let sent = mock_outbound::sent();
        let (group, asked) = sent.last().unwrap();
        assert_eq!(group, "auth");
        assert_eq!((asked.method.as_str(), asked.path_with_query.as_str()), ("GET", "/check"));
        let header = |name: &str| asked.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(header("authorization"), Some("Bearer t"));
        assert_eq!(header("x-original-uri"), Some("/api/x?y=1"));
        assert_eq!(header("x-original-method"), Some("POST"));
        assert_eq!(header("x-other"), None);
    }

    #[test]
    fn a_refusal_is_the_clients_answer_an_outage_a_503_or_a_pass_without_identity_and_a_mistake_a_500() {
        mock_outbound::grant("auth", |_| Ok(answer(401, &[("www-authenticate", "Bearer"), ("x-user", "no")])));
        let mut filter = instantiate::<AuthRequest>(CONFIG).unwrap();
        let Verdict::Respond(reply) = filter.on_request(&Request::new("GET", "/")) else { panic!("refused") };
        assert_eq!((reply.status, reply.body.as_slice()), (401, &b"why"[..]));
        assert_eq!(reply.header_value("www-authenticate"), Some("Bearer"));
        assert_eq!(reply.header_value("x-user"), None);

        let open = r#"{"upstream": "auth", "identity_headers": ["x-user"], "allow_when_unavailable": true}"#;
        let down = [Ok(answer(503, &[])), Err(FetchError::Timeout), Err(FetchError::Unreachable("x".into()))];
        for failing in down {
            mock_outbound::grant("auth", move |_| failing.clone());
            let Verdict::Respond(reply) = filter.on_request(&Request::new("GET", "/")) else { panic!("503") };
            assert_eq!(reply.status, 503);

            let req = Request::new("GET", "/").with_header("x-user", "mallory");
            assert_eq!(instantiate::<AuthRequest>(open).unwrap().on_request(&req), Verdict::Continue);
            assert_eq!(req.header("x-user"), None, "a client's identity never passes");
        }
        // A mistake is no outage: nothing passes, allowed or not.
        let mistakes = [Ok(answer(404, &[])), Err(FetchError::NotGranted("auth".into()))];
        for failing in mistakes {
            mock_outbound::grant("auth", move |_| failing.clone());
            for config in [CONFIG, open] {
                let verdict = instantiate::<AuthRequest>(config).unwrap().on_request(&Request::new("GET", "/"));
                let Verdict::Respond(reply) = verdict else { panic!("500") };
                assert_eq!(reply.status, 500);
            }
        }
    }

    #[test]
    fn a_bad_config_is_refused_at_load() {
        mock_upstreams::set_groups(&["origin", "auth"]);
        check_config::<AuthRequest>(CONFIG).unwrap();
        let missing = check_config::<AuthRequest>(r#"{"upstream": "nope"}"#).unwrap_err();
        assert!(missing.contains("\"nope\" is not configured"), "{missing}");
        assert!(check_config::<AuthRequest>(r#"{"upstream": "auth", "path": "check"}"#).is_err());
        assert!(check_config::<AuthRequest>(r#"{"upstream": "auth", "identity_headers": ["bad name"]}"#).is_err());
        let host = check_config::<AuthRequest>(r#"{"upstream": "auth", "forward_headers": ["Host"]}"#).unwrap_err();
        assert!(host.contains("the host's to set"), "{host}");
    }
}
