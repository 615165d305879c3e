//! Rewrite a request's path prefix and edit headers on both phases.
//! The config is documented in this crate's README.

use std::collections::BTreeMap;

use cascade_filter::{Filter, Request, Response, Verdict, export_filter};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Remove this path prefix (on a segment boundary) when present.
    #[serde(default)]
    strip_prefix: Option<String>,
    /// Put this prefix in front of the path (after stripping, if configured).
    #[serde(default)]
    add_prefix: Option<String>,
    #[serde(default)]
    request_headers: HeaderRules,
    #[serde(default)]
    response_headers: HeaderRules,
}

/// Header edits, applied in the order remove, set, add.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderRules {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
}

pub struct Rewrite(Config);

impl Filter for Rewrite {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        for prefix in [&config.strip_prefix, &config.add_prefix]
            .into_iter()
            .flatten()
        {
            if !prefix.starts_with('/') {
                return Err(format!("path prefix {prefix:?} must start with '/'"));
            }
        }
        Ok(Self(config))
    }

    fn on_request(&mut self, req: &Request) -> Verdict {
        if let Some(path) = rewrite_path(&req.path(), &self.0) {
            req.set_path(&path)
                .expect("a rewritten absolute path is valid");
        }
        let rules = &self.0.request_headers;
        rules.remove.iter().for_each(|name| req.remove_header(name));
        for (name, value) in &rules.set {
            req.set_header(name, value)
                .expect("header names are checked by the host");
        }
        for (name, value) in &rules.add {
            req.add_header(name, value)
                .expect("header names are checked by the host");
        }
        Verdict::Continue
    }

    fn on_response(&mut self, resp: &Response) {
        let rules = &self.0.response_headers;
        rules
            .remove
            .iter()
            .for_each(|name| resp.remove_header(name));
        for (name, value) in &rules.set {
            resp.set_header(name, value)
                .expect("header names are checked by the host");
        }
        for (name, value) in &rules.add {
            resp.add_header(name, value)
                .expect("header names are checked by the host");
        }
    }
}

/// The new path, or `None` to leave it alone. With both prefixes set this is
/// a replacement: a path without `strip_prefix` is not touched.
fn rewrite_path(path: &str, config: &Config) -> Option<String> {
    let rest = match &config.strip_prefix {
        Some(prefix) => strip_segment_prefix(path, prefix)?,
        None => path,
    };
    let joined = match &config.add_prefix {
        Some(prefix) => format!("{}{}", prefix.trim_end_matches('/'), rest),
        None => rest.to_string(),
    };
    Some(if joined.is_empty() {
        "/".into()
    } else {
        joined
    })
}

/// `path` without `prefix`, if `prefix` ends on a segment boundary of `path`:
/// `/api` strips `/api` and `/api/x` but not `/apix`.
fn strip_segment_prefix<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let prefix = prefix.trim_end_matches('/');
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

export_filter!(Rewrite);

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_filter::instantiate;

    fn rewrite(config: &str) -> Rewrite {
        instantiate::<Rewrite>(config).expect("valid config")
    }

    #[test]
    fn strips_prefix_on_segment_boundary() {
        let mut f = rewrite(r#"{"strip_prefix": "/api"}"#);
        for (from, to) in [
            ("/api/users", "/users"),
            ("/api", "/"),
            ("/apix", "/apix"),
            ("/other", "/other"),
        ] {
            let req = Request::new("GET", from);
            assert_eq!(f.on_request(&req), Verdict::Continue);
            assert_eq!(req.path(), to, "from {from}");
        }
    }

    #[test]
    fn replaces_prefix_and_keeps_query() {
        let mut f = rewrite(r#"{"strip_prefix": "/api/", "add_prefix": "/v2"}"#);
        let req = Request::new("GET", "/api/users?page=2");
        f.on_request(&req);
        assert_eq!(req.path(), "/v2/users");
        assert_eq!(req.query().as_deref(), Some("page=2"));
        let untouched = Request::new("GET", "/static/a.css");
        f.on_request(&untouched);
        assert_eq!(untouched.path(), "/static/a.css");
    }

    #[test]
    fn adds_prefix_alone() {
        let mut f = rewrite(r#"{"add_prefix": "/v2"}"#);
        let req = Request::new("GET", "/users");
        f.on_request(&req);
        assert_eq!(req.path(), "/v2/users");
    }

    #[test]
    fn edits_request_headers() {
        let mut f = rewrite(
            r#"{"request_headers": {"set": {"x-edge": "cascade"}, "add": {"x-tag": "b"}, "remove": ["x-debug"]}}"#,
        );
        let req = Request::new("GET", "/")
            .with_header("x-edge", "old")
            .with_header("x-debug", "1")
            .with_header("x-tag", "a");
        f.on_request(&req);
        assert_eq!(req.header_values("x-edge"), ["cascade"]);
        assert_eq!(req.header("x-debug"), None);
        assert_eq!(req.header_values("x-tag"), ["a", "b"]);
    }

    #[test]
    fn edits_response_headers() {
        let mut f = rewrite(
            r#"{"response_headers": {"set": {"x-served-by": "cascade"}, "remove": ["server"]}}"#,
        );
        f.on_request(&Request::new("GET", "/"));
        let resp = Response::new(200).with_header("server", "origin");
        f.on_response(&resp);
        assert_eq!(resp.header("x-served-by").as_deref(), Some("cascade"));
        assert_eq!(resp.header("server"), None);
    }

    #[test]
    fn rejects_bad_config() {
        let unknown = instantiate::<Rewrite>(r#"{"strip": "/api"}"#)
            .err()
            .unwrap();
        assert!(unknown.contains("unknown field `strip`"), "{unknown}");
        let relative = instantiate::<Rewrite>(r#"{"add_prefix": "v2"}"#)
            .err()
            .unwrap();
        assert!(relative.contains("must start with '/'"), "{relative}");
    }
}
