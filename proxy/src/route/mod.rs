//! Route match: host, then the longest path prefix.
//!
//! The most specific host pattern that matches picks the set of routes
//! (exact host, then the longest `*.suffix`, then `*`), as Envoy picks a
//! virtual host. Within it the longest `path_prefix` that matches on a segment
//! boundary wins: `/api` matches `/api` and `/api/x`, never `/apix`. Matching
//! always runs on the normalized path (see [`normalize`]).

pub mod normalize;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::RouteConfig;
use crate::filters::FilterChain;

/// Which hosts a route answers for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `*`: any host.
    Any,
    /// `*.example.com`: any subdomain, not `example.com` itself. Holds `.example.com`.
    Suffix(String),
    /// `example.com`.
    Exact(String),
}

impl HostPattern {
    /// Parse `*`, `*.suffix` or an exact host name.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.split('.')
                    .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        };
        if text == "*" {
            Ok(Self::Any)
        } else if let Some(suffix) = text.strip_prefix("*.") {
            if valid_name(suffix) {
                Ok(Self::Suffix(format!(".{suffix}")))
            } else {
                Err(format!("{text:?} is not a valid wildcard host"))
            }
        } else if valid_name(&text) {
            Ok(Self::Exact(text))
        } else {
            Err(format!("{text:?} is not a host name, \"*.suffix\" or \"*\""))
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Suffix(s) => write!(f, "*{s}"),
            Self::Exact(h) => f.write_str(h),
        }
    }
}

/// A route, ready to serve: its config and its resolved filter chain.
#[derive(Debug)]
pub struct Route {
    pub config: RouteConfig,
    /// The route name, shared cheaply with every request on it.
    pub name: Arc<str>,
    pub chain: FilterChain,
}

impl Route {
    pub fn new(config: RouteConfig, chain: FilterChain) -> Self {
        Self { name: Arc::from(config.name.as_str()), config, chain }
    }
}

/// Routes sharing one host pattern, longest prefix first.
#[derive(Debug, Default)]
struct PrefixTable(Vec<Arc<Route>>);

impl PrefixTable {
    /// The route with the longest prefix that matches `path`. A prefix
    /// that is `path` with a `/` after it ranks as `path` itself would,
    /// after a route whose prefix is `path`.
    fn find(&self, path: &str) -> Option<&Arc<Route>> {
        let mut bare_path_of = None;
        for route in &self.0 {
            let prefix = route.config.path_prefix.as_str();
            if !prefix_matches(prefix, path) {
                continue;
            }
            if prefix.len() > path.len() {
                bare_path_of = Some(route);
            } else {
                return Some(bare_path_of.filter(|_| prefix.len() < path.len()).unwrap_or(route));
            }
        }
        bare_path_of
    }
}

/// `prefix` matches `path` when it is equal, or ends on a segment
/// boundary. A prefix ending in `/` also matches the path without it
/// (`/admin/` matches `/admin`): origins (Express, Spring, nginx's own 301)
/// serve both alike, and the bare path must not reach a shorter route
/// without this one's filters.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => prefix.len() > 1 && prefix.strip_suffix('/') == Some(path),
    }
}

/// All routes, indexed for matching. Built once per config version.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, PrefixTable>,
    /// Longest suffix first.
    suffixes: Vec<(String, PrefixTable)>,
    any: PrefixTable,
    all: Vec<Arc<Route>>,
}

/// Two routes that can never both be reached.
#[derive(Debug, thiserror::Error)]
#[error("{at}: route {name:?} duplicates route {other:?} ({host} {prefix})")]
pub struct DuplicateRoute {
    pub at: crate::config::Location,
    pub name: String,
    pub other: String,
    pub host: HostPattern,
    pub prefix: String,
}

impl RouteTable {
    /// Index `routes`, refusing duplicate names and duplicate (host, prefix) pairs.
    pub fn build(routes: Vec<Route>) -> Result<Self, Box<DuplicateRoute>> {
        let mut table = Self::default();
        let mut seen: HashMap<(HostPattern, String), String> = HashMap::new();
        let mut names: HashMap<String, String> = HashMap::new();
        for route in routes {
            let config = &route.config;
            let duplicate = |other: String| {
                Box::new(DuplicateRoute {
                    at: config.at.clone(),
                    name: config.name.clone(),
                    other,
                    host: config.host.clone(),
                    prefix: config.path_prefix.clone(),
                })
            };
            if let Some(other) = names.insert(config.name.clone(), config.name.clone()) {
                return Err(duplicate(other));
            }
            if let Some(other) = seen.insert((config.host.clone(), config.path_prefix.clone()), config.name.clone()) {
                return Err(duplicate(other));
            }
            let route = Arc::new(route);
            table.all.push(route.clone());
            let bucket = match &route.config.host {
                HostPattern::Any => &mut table.any,
                HostPattern::Exact(h) => table.exact.entry(h.clone()).or_default(),
                HostPattern::Suffix(s) => match table.suffixes.iter().position(|(x, _)| x == s) {
                    Some(i) => &mut table.suffixes[i].1,
                    None => {
                        table.suffixes.push((s.clone(), PrefixTable::default()));
                        &mut table.suffixes.last_mut().expect("just pushed").1
                    }
                },
            };
            bucket.0.push(route);
        }
        let by_prefix_len = |t: &mut PrefixTable| t.0.sort_by_key(|r| std::cmp::Reverse(r.config.path_prefix.len()));
        table.exact.values_mut().for_each(by_prefix_len);
        table.suffixes.iter_mut().for_each(|(_, t)| by_prefix_len(t));
        by_prefix_len(&mut table.any);
        table.suffixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Ok(table)
    }

    /// The route for `host` (any case, with or without port) and a normalized `path`.
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let host = normalize::host(host);
        let bucket = self
            .exact
            .get(host.as_ref())
            .or_else(|| self.suffixes.iter().find(|(suffix, _)| host.ends_with(suffix.as_str())).map(|(_, t)| t))
            .unwrap_or(&self.any);
        bucket.find(path)
    }

    /// Every route, in config order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Location, RouteConfig};

    fn route(name: &str, host: &str, prefix: &str) -> Route {
        Route::new(
            RouteConfig {
                name: name.into(),
                host: HostPattern::parse(host).unwrap(),
                path_prefix: prefix.into(),
                upstream: "origin".into(),
                filters: vec![],
                cache: Default::default(),
                at: Location { file: "routes.toml".into(), line: 1, key: "route.name".into() },
            },
            FilterChain::default(),
        )
    }

    fn table<const N: usize>(routes: [Route; N]) -> RouteTable {
        RouteTable::build(Vec::from(routes)).unwrap()
    }

    fn name<'a>(t: &'a RouteTable, host: &str, path: &str) -> Option<&'a str> {
        t.find(host, path).map(|r| r.config.name.as_str())
    }

    #[test]
    fn longest_prefix_on_segment_boundary() {
        let t = table([route("root", "*", "/"), route("api", "*", "/api"), route("v2", "*", "/api/v2/")]);
        assert_eq!(name(&t, "x", "/"), Some("root"));
        assert_eq!(name(&t, "x", "/api"), Some("api"));
        assert_eq!(name(&t, "x", "/api/users"), Some("api"));
        assert_eq!(name(&t, "x", "/apix"), Some("root"));
        assert_eq!(name(&t, "x", "/api/v2/users"), Some("v2"));
        // A prefix with a `/` after it covers the path without it, so that
        // path does not reach a shorter prefix's route without its filters;
        // a route for the path itself comes first.
        assert_eq!(name(&t, "x", "/api/v2"), Some("v2"));
        assert_eq!(name(&t, "x", "/api/v2x"), Some("api"));
        let t = table([route("root", "*", "/"), route("exact", "*", "/api/v2"), route("v2", "*", "/api/v2/")]);
        assert_eq!(name(&t, "x", "/api/v2"), Some("exact"));
        assert_eq!(name(&t, "x", "/api/v2/a"), Some("v2"));
        assert!(!prefix_matches("/", "") && prefix_matches("/", "/"));
    }

    #[test]
    fn host_specificity() {
        let t = table([
            route("any", "*", "/"),
            route("wild", "*.example.com", "/"),
            route("deep", "*.eu.example.com", "/"),
            route("exact", "www.example.com", "/only"),
        ]);
        assert_eq!(name(&t, "WWW.example.com:8080", "/only/x"), Some("exact"));
        // The exact host owns its requests: no fallback to wildcards.
        assert_eq!(name(&t, "www.example.com", "/other"), None);
        assert_eq!(name(&t, "a.example.com", "/"), Some("wild"));
        assert_eq!(name(&t, "a.eu.example.com", "/"), Some("deep"));
        assert_eq!(name(&t, "example.com", "/"), Some("any"));
        assert_eq!(name(&t, "", "/"), Some("any"));
    }

    #[test]
    fn no_match_without_catch_all() {
        let t = table([route("api", "*", "/api")]);
        assert_eq!(name(&t, "x", "/other"), None);
    }

    #[test]
    fn duplicates_are_refused() {
        let err = RouteTable::build(vec![route("a", "*", "/x"), route("b", "*", "/x")]).unwrap_err();
        assert!(err.to_string().contains("route \"b\" duplicates route \"a\""), "{err}");
        let err = RouteTable::build(vec![route("a", "*", "/x"), route("a", "*", "/y")]).unwrap_err();
        assert!(err.to_string().contains("duplicates route \"a\""), "{err}");
    }

    #[test]
    fn host_patterns() {
        assert_eq!(HostPattern::parse("*.Example.com").unwrap(), HostPattern::Suffix(".example.com".into()));
        assert!(HostPattern::parse("a b").is_err());
        assert!(HostPattern::parse("*.").is_err());
        assert!(HostPattern::parse("foo.*").is_err());
    }
}
