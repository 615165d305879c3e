//! Rewrite a request's path prefix and edit headers on both phases.
//! The config is documented in this crate's README.

use std::collections::BTreeMap;
use std::rc::Rc;

use cascade_filter::client::{MAX_HEADER_NAME_BYTES, check_header, check_removal, is_token};
use cascade_filter::path::{check_prefix, strip_segment_prefix};
use cascade_filter::{EditError, Filter, Reply, Request, Verdict, export_filter, log, regex};
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
    /// Regex rewrites of the path, applied in order after the prefix rules.
    #[serde(default)]
    path_rewrites: Vec<PathRewrite>,
    /// Redirects, checked first; the first matching one answers.
    #[serde(default)]
    redirects: Vec<Redirect>,
    #[serde(default)]
    request_headers: HeaderRules,
    #[serde(default)]
    response_headers: HeaderRules,
}

/// Replace the first match of `pattern` in the path with `replacement`
/// (`$1`, `${name}` expand captures).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathRewrite {
    pattern: String,
    replacement: String,
    /// `pattern` within one that matches the whole path, to read its
    /// captures one by one (see [`PathRewrite::apply`]). Built at load.
    #[serde(skip)]
    whole_path_pattern: String,
    /// A replacement with a query part (`/find?q=$1`), in pieces: its path
    /// part, then its query part. Built at load.
    #[serde(skip)]
    with_query: Option<(Vec<Piece>, Vec<Piece>)>,
}

/// Answer with a redirect when `pattern` matches the path. `to` may use
/// captures; the query string is kept unless `keep_query` is false.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Redirect {
    pattern: String,
    to: String,
    #[serde(default = "default_redirect_status")]
    status: u16,
    #[serde(default = "keep_query_default")]
    keep_query: bool,
    /// `pattern` within one that matches the whole path, so that the
    /// location is `to` alone, with the captures expanded. Built at load.
    #[serde(skip)]
    whole_path_pattern: String,
}

fn default_redirect_status() -> u16 {
    302
}

fn keep_query_default() -> bool {
    true
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

/// The config is shared, not copied, by each request's clone.
#[derive(Clone)]
pub struct Rewrite(Rc<Config>);

impl Filter for Rewrite {
    type Config = Config;

    fn new(mut config: Config) -> Result<Self, String> {
        for prefix in [&config.strip_prefix, &config.add_prefix].into_iter().flatten() {
            check_prefix(prefix).map_err(|e| format!("path prefix {e}"))?;
        }
        for redirect in &config.redirects {
            if ![301, 302, 307, 308].contains(&redirect.status) {
                return Err(format!("redirect status {} is not 301, 302, 307 or 308", redirect.status));
            }
        }
        for redirect in &mut config.redirects {
            redirect.whole_path_pattern = whole_path(&redirect.pattern);
        }
        for rule in &mut config.path_rewrites {
            rule.whole_path_pattern = whole_path(&rule.pattern);
            rule.with_query = rule.replacement.split_once('?').map(|(path, query)| (pieces(path), pieces(query)));
        }
        // The host compiles (and caches) each pattern here, so a bad one is
        // reported when the route is loaded. A redirect's pattern is checked
        // alone too: wrapped, an unbalanced `a)(b` would pass.
        for redirect in &config.redirects {
            check_references(&redirect.pattern, &redirect.to)?;
            regex::is_match(&redirect.whole_path_pattern, "")?;
        }
        for rule in &config.path_rewrites {
            check_references(&rule.pattern, &rule.replacement)?;
            regex::is_match(&rule.whole_path_pattern, "")?;
        }
        config.request_headers.check("request_headers")?;
        config.response_headers.check("response_headers")?;
        Ok(Self(Rc::new(config)))
    }

    fn on_request(&mut self, req: &Request) -> Verdict {
        // Staged first, the response rules apply to a redirect below as to
        // any other answer, and the filter needs no on_response: its
        // instance is free while the request goes upstream.
        // One the host will not stage (the request's staged edits are at
        // their limit) leaves the response as it is: logged, not a failure.
        if let Err(e) = self.0.response_headers.apply(
            |name| req.remove_response_header(name),
            |name, value| req.set_response_header(name, value),
            |name, value| req.add_response_header(name, value),
        ) {
            log::warn(&format!("response headers not all staged: {e}"));
        }
        let original = req.path();
        for redirect in &self.0.redirects {
            let expanded = regex::replace(&redirect.whole_path_pattern, &original, &redirect.to);
            if let Some(mut location) = expanded.expect("checked at load") {
                if let (true, Some(query)) = (redirect.keep_query, req.query()) {
                    location.push(if location.contains('?') { '&' } else { '?' });
                    location.push_str(&query);
                }
                return Verdict::Respond(Reply::new(redirect.status).header("location", location));
            }
        }
        let mut path = rewrite_path(&original, &self.0).unwrap_or_else(|| original.clone());
        for rule in &self.0.path_rewrites {
            if let Some(rewritten) = rule.apply(&path) {
                path = rewritten;
            }
        }
        if path != original {
            // A replacement may carry new query arguments; as in nginx, the
            // request's own arguments follow them.
            if let Some((new_path, new_query)) = path.split_once('?') {
                let query = match req.query() {
                    Some(old) if !old.is_empty() => format!("{new_query}&{old}"),
                    _ => new_query.to_string(),
                };
                req.set_query(Some(&query)).unwrap_or_else(|e| panic!("rewrite produced {e}"));
                path = new_path.to_string();
            }
            // A rewrite that yields an invalid path is a config bug: trap, and
            // let the route's on_error decide.
            req.set_path(&path).unwrap_or_else(|e| panic!("rewrite produced {e}"));
        }
        let applied = self.0.request_headers.apply(
            |name| {
                req.remove_header(name);
                Ok(())
            },
            |name, value| req.set_header(name, value),
            |name, value| req.add_header(name, value),
        );
        match applied {
            Ok(()) => Verdict::Continue,
            Err(refused) => Verdict::refused_edit(refused),
        }
    }
}

impl HeaderRules {
    /// Refuse at load a name or value the host would refuse on every request.
    fn check(&self, which: &str) -> Result<(), String> {
        let refused = |name: &str, e: EditError| match e {
            EditError::InvalidHeaderValue(_) => format!("{which}: the value of {name:?} contains a control character"),
            _ if is_token(name) && name.len() <= MAX_HEADER_NAME_BYTES => {
                format!("{which}: {name:?} is written by the proxy alone (framing and hop-by-hop fields)")
            }
            _ => format!("{which}: {name:?} is not a valid header name (a token of at most 256 bytes)"),
        };
        for name in &self.remove {
            check_removal(name).map_err(|e| refused(name, e))?;
        }
        for (name, value) in self.set.iter().chain(&self.add) {
            check_header(name, value).map_err(|e| refused(name, e))?;
        }
        Ok(())
    }

    /// Apply the rules in the order remove, set, add, up to the first the
    /// host refuses. Names and values were checked at load, so a refusal is
    /// the message's header count (the route's `limits.max_headers`).
    fn apply(
        &self,
        remove: impl Fn(&str) -> Result<(), EditError>,
        set: impl Fn(&str, &str) -> Result<(), EditError>,
        add: impl Fn(&str, &str) -> Result<(), EditError>,
    ) -> Result<(), EditError> {
        for name in &self.remove {
            remove(name)?;
        }
        for (name, value) in &self.set {
            set(name, value)?;
        }
        for (name, value) in &self.add {
            add(name, value)?;
        }
        Ok(())
    }
}

/// `pattern` within one that matches the whole of any text it matches a
/// part of, with the same groups: its expansion is the replacement alone.
fn whole_path(pattern: &str) -> String {
    format!("^(?s:.*?)(?:{pattern})(?s:.*)$")
}

/// Refuse a capture reference that names no group of `pattern`, since the
/// regex crate expands it to nothing: a misspelt `${idd}`, a `$3` of a
/// pattern with two groups, or `$1_x`, which the regex crate reads as a group
/// named `1_x` (not group 1, then `_x`), though no group name starts with a
/// digit. Written `${1}_x`, it means what it looks like. (References follow
/// the regex crate's `Captures::expand`: `$$` is a `$`, `${...}` runs to
/// `}`.) The host compiles `pattern` to name its groups, so a bad pattern is
/// refused here too.
fn check_references(pattern: &str, replacement: &str) -> Result<(), String> {
    let groups = regex::capture_names(pattern)?;
    for piece in pieces(replacement) {
        let Piece::Group(name) = piece else { continue };
        let name = name.as_str();
        if name.is_empty() {
            return Err(format!("{replacement:?}: `${{}}` names no group and expands to nothing"));
        }
        let digits = name.bytes().take_while(u8::is_ascii_digit).count();
        let names_a_group = match name.parse::<usize>() {
            Ok(number) => number < groups.len(),
            Err(_) if digits > 0 => {
                let (number, tail) = name.split_at(digits);
                return Err(format!(
                    "{replacement:?}: the reference `{name}` names no group (a group name cannot start with a \
                     digit); write `${{{number}}}{tail}` for group {number} followed by {tail:?}"
                ));
            }
            Err(_) => groups.iter().any(|group| group.as_deref() == Some(name)),
        };
        if !names_a_group {
            let named: Vec<&str> = groups.iter().flatten().map(String::as_str).collect();
            return Err(format!(
                "{replacement:?}: the reference `{name}` names no group of {pattern:?}, which has groups 1 to {} \
                 and names [{}]",
                groups.len() - 1,
                named.join(", ")
            ));
        }
    }
    Ok(())
}

/// A part of a replacement, as the regex crate reads it.
#[derive(Debug, PartialEq)]
enum Piece {
    Text(String),
    /// `$name` (the longest run of letters, digits and `_`) or `${name}`.
    Group(String),
}

/// `replacement` in pieces: `$$` is a `$`, as is a `$` that starts no
/// reference.
fn pieces(replacement: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut rest = replacement;
    while let Some(at) = rest.find('$') {
        pieces.push(Piece::Text(rest[..at].to_string()));
        rest = &rest[at + 1..];
        // Braced, any name goes (`${}` names the group "", which no
        // pattern has); bare, the longest run of letters, digits and `_`.
        if let Some((name, after)) = rest.strip_prefix('{').and_then(|braced| braced.split_once('}')) {
            pieces.push(Piece::Group(name.to_string()));
            rest = after;
            continue;
        }
        match rest.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count() {
            0 => {
                pieces.push(Piece::Text("$".into()));
                rest = rest.strip_prefix('$').unwrap_or(rest);
            }
            len => {
                let (name, after) = rest.split_at(len);
                pieces.push(Piece::Group(name.to_string()));
                rest = after;
            }
        }
    }
    pieces.push(Piece::Text(rest.to_string()));
    pieces.retain(|piece| !matches!(piece, Piece::Text(text) if text.is_empty()));
    pieces
}

impl PathRewrite {
    /// `path` rewritten by this rule, or `None` when the pattern does not
    /// match it. A capture expanded into a new query part is
    /// percent-encoded as a query value, as nginx's `rewrite` escapes them:
    /// the path may hold `&`, `=`, `+` and `;` as they are, and
    /// `/search/shoes&admin=1` must not send the origin `admin=1`.
    fn apply(&self, path: &str) -> Option<String> {
        let Some((path_part, query_part)) = &self.with_query else {
            return regex::replace(&self.pattern, path, &self.replacement).expect("checked at load");
        };
        // The text around the match, marked by a NUL, which no path holds.
        let marked = regex::replace(&self.pattern, path, "\0").expect("checked at load")?;
        let (before, after) = marked.split_once('\0')?;
        let matched = &path[before.len()..path.len() - after.len()];
        // Group 0 is the match, which the whole-path pattern's is not.
        let capture = |name: &str| match name {
            "0" => Some(matched.to_string()),
            name => regex::replace(&self.whole_path_pattern, path, &format!("${{{name}}}")).expect("checked at load"),
        };
        let expand = |pieces: &[Piece], out: &mut String, encode: bool| {
            for piece in pieces {
                match piece {
                    Piece::Text(text) => out.push_str(text),
                    Piece::Group(name) => {
                        let value = capture(name).unwrap_or_default();
                        if encode {
                            encode_query_value(&value, out);
                        } else {
                            out.push_str(&value);
                        }
                    }
                }
            }
        };
        let mut out = before.to_string();
        expand(path_part, &mut out, false);
        out.push('?');
        expand(query_part, &mut out, true);
        out.push_str(after);
        Some(out)
    }
}

/// `value` into `out`, with what separates or alters query parameters
/// percent-encoded.
fn encode_query_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '&' | '=' | '+' | ';' | '#' | '?' | ' ' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
}

/// The new path, or `None` to leave it alone. With both prefixes set this is
/// a replacement: a path without `strip_prefix` is not touched.
fn rewrite_path(path: &str, config: &Config) -> Option<String> {
    if config.strip_prefix.is_none() && config.add_prefix.is_none() {
        return None;
    }
    let rest = match &config.strip_prefix {
        Some(prefix) => strip_segment_prefix(path, prefix)?,
        None => path,
    };
    let joined = match &config.add_prefix {
        Some(prefix) => [prefix.trim_end_matches('/'), rest].concat(),
        None => rest.to_string(),
    };
    Some(if joined.is_empty() { "/".into() } else { joined })
}

export_filter!(Rewrite);

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_filter::{Response, instantiate};

    fn rewrite(config: &str) -> Rewrite {
        instantiate::<Rewrite>(config).expect("valid config")
    }

    /// A request with as many headers as the host lets a filter leave gets
    /// a 431 when a rule would add one, not a trap.
    #[test]
    fn a_request_at_the_header_count_gets_431() {
        let mut f = rewrite(r#"{"request_headers": {"set": {"x-edge": "cascade"}}}"#);
        let full = (0..256).fold(Request::new("GET", "/a"), |req, i| req.with_header(&format!("x-h{i}"), "1"));
        let Verdict::Respond(reply) = f.on_request(&full) else { panic!("a full request went on") };
        assert_eq!(reply.status, 431);
        let fits = (0..255).fold(Request::new("GET", "/a"), |req, i| req.with_header(&format!("x-h{i}"), "1"));
        assert_eq!(f.on_request(&fits), Verdict::Continue);
        assert_eq!(fits.header("x-edge").as_deref(), Some("cascade"));
    }

    #[test]
    fn strips_prefix_on_segment_boundary() {
        let mut f = rewrite(r#"{"strip_prefix": "/api"}"#);
        for (from, to) in [("/api/users", "/users"), ("/api", "/"), ("/apix", "/apix"), ("/other", "/other")] {
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
        let req =
            Request::new("GET", "/").with_header("x-edge", "old").with_header("x-debug", "1").with_header("x-tag", "a");
        f.on_request(&req);
        assert_eq!(req.header_values("x-edge"), ["cascade"]);
        assert_eq!(req.header("x-debug"), None);
        assert_eq!(req.header_values("x-tag"), ["a", "b"]);
    }

    #[test]
    fn edits_response_headers() {
        let mut f = rewrite(r#"{"response_headers": {"set": {"x-served-by": "cascade"}, "remove": ["server"]}}"#);
        let req = Request::new("GET", "/");
        f.on_request(&req);
        let resp = req.respond_to(Response::new(200).with_header("server", "origin"));
        assert_eq!(resp.header("x-served-by").as_deref(), Some("cascade"));
        assert_eq!(resp.header("server"), None);
        // A redirect is a response too.
        let config = r#"{"response_headers": {"set": {"x-served-by": "cascade"}},
            "redirects": [{"pattern": "^/old$", "to": "/new"}]}"#;
        let req = Request::new("GET", "/old");
        assert!(matches!(rewrite(config).on_request(&req), Verdict::Respond(_)));
        let resp = req.respond_to(Response::new(302));
        assert_eq!(resp.header("x-served-by").as_deref(), Some("cascade"));
    }

    #[test]
    fn header_rules_the_host_would_refuse_are_refused_at_load() {
        let error = |config| instantiate::<Rewrite>(config).err().unwrap();
        let bad_name = error(r#"{"response_headers": {"remove": ["bad name"]}}"#);
        assert!(bad_name.starts_with(r#"response_headers: "bad name" is not a valid header name"#), "{bad_name}");
        let long = format!(r#"{{"response_headers": {{"remove": ["{}"]}}}}"#, "x".repeat(257));
        assert!(error(&long).contains("at most 256 bytes"));
        // The proxy frames messages: a filter neither writes nor removes the
        // framing, and may only remove the hop-by-hop fields.
        let framing = error(r#"{"request_headers": {"remove": ["Content-Length"]}}"#);
        assert!(framing.contains(r#""Content-Length" is written by the proxy alone"#), "{framing}");
        let hop = error(r#"{"response_headers": {"set": {"upgrade": "h2c"}}}"#);
        assert!(hop.contains(r#""upgrade" is written by the proxy alone"#), "{hop}");
        rewrite(r#"{"request_headers": {"remove": ["upgrade", "te"]}}"#);
        let bad_value = error(r#"{"request_headers": {"add": {"x-a": "one\r\ntwo"}}}"#);
        assert_eq!(bad_value, r#"request_headers: the value of "x-a" contains a control character"#);
        let escape = error(r#"{"response_headers": {"set": {"x-a": "\u001b[31m"}}}"#);
        assert!(escape.contains("control character"), "{escape}");
        assert!(instantiate::<Rewrite>(r#"{"response_headers": {"set": {"x-a": "tab\tand caf\u00e9"}}}"#).is_ok());
    }

    #[test]
    fn regex_rewrites_with_captures() {
        let config = r#"{"path_rewrites": [{"pattern": "^/users/(\\d+)/profile$", "replacement": "/profiles/$1"}]}"#;
        let mut f = rewrite(config);
        let req = Request::new("GET", "/users/42/profile");
        f.on_request(&req);
        assert_eq!(req.path(), "/profiles/42");
        let mut with_query =
            rewrite(r#"{"path_rewrites": [{"pattern": "^/p/(\\d+)$", "replacement": "/item?id=$1"}]}"#);
        let req = Request::new("GET", "/p/7?ref=home");
        with_query.on_request(&req);
        assert_eq!(req.path(), "/item");
        assert_eq!(req.query().as_deref(), Some("id=7&ref=home"));
        let other = Request::new("GET", "/users/x/profile");
        f.on_request(&other);
        assert_eq!(other.path(), "/users/x/profile");
    }

    /// A capture expanded into the query is encoded as a query value (as
    /// nginx's `rewrite` does): the path's `&`, `=`, `+` and `;` must not add
    /// parameters of the client's choosing. In the path part it stays as is.
    #[test]
    fn captures_in_a_new_query_are_encoded() {
        let config = r#"{"path_rewrites": [{"pattern": "/search/(?P<term>[^/]+)/(\\w+)$",
            "replacement": "/find/$2?q=${term}&$$x=$2&s=${1}"}]}"#;
        let mut f = rewrite(config);
        let req = Request::new("GET", "/v1/search/shoes&admin=1+a;b/all?page=2");
        f.on_request(&req);
        assert_eq!(req.path(), "/v1/find/all");
        assert_eq!(
            req.query().as_deref(),
            Some("q=shoes%26admin%3D1%2Ba%3Bb&$x=all&s=shoes%26admin%3D1%2Ba%3Bb&page=2")
        );
        let untouched = Request::new("GET", "/other/a&b");
        f.on_request(&untouched);
        assert_eq!((untouched.path().as_str(), untouched.query()), ("/other/a&b", None));
        assert_eq!(
            pieces("a$1${b}$$c$-${x"),
            [
                Piece::Text("a".into()),
                Piece::Group("1".into()),
                Piece::Group("b".into()),
                Piece::Text("$".into()),
                Piece::Text("c".into()),
                Piece::Text("$".into()),
                Piece::Text("-".into()),
                Piece::Text("$".into()),
                Piece::Text("{x".into())
            ]
        );
        assert_eq!(pieces("${}"), [Piece::Group(String::new())]);
        let empty = instantiate::<Rewrite>(r#"{"path_rewrites": [{"pattern": "^/a", "replacement": "/b${}"}]}"#);
        assert!(empty.err().unwrap().contains("`${}` names no group"));
        // `$0` is the match, as the regex crate expands it.
        let mut whole = rewrite(r#"{"path_rewrites": [{"pattern": "/search/[^/]+", "replacement": "/find?o=$0"}]}"#);
        let req = Request::new("GET", "/v1/search/x&y");
        whole.on_request(&req);
        assert_eq!((req.path().as_str(), req.query().as_deref()), ("/v1/find", Some("o=/search/x%26y")));
    }

    #[test]
    fn redirects_with_captures_and_query() {
        let mut f = rewrite(r#"{"redirects": [{"pattern": "^/old/(.*)$", "to": "/new/$1", "status": 301}]}"#);
        let Verdict::Respond(reply) = f.on_request(&Request::new("GET", "/old/a/b?x=1")) else {
            panic!("expected a redirect");
        };
        assert_eq!(reply.status, 301);
        assert_eq!(reply.header_value("location"), Some("/new/a/b?x=1"));
        assert_eq!(f.on_request(&Request::new("GET", "/elsewhere")), Verdict::Continue);
    }

    #[test]
    fn rejects_bad_config() {
        let status = instantiate::<Rewrite>(r#"{"redirects": [{"pattern": "^/a", "to": "/b", "status": 200}]}"#);
        assert!(status.err().unwrap().contains("redirect status 200"));
        let pattern = instantiate::<Rewrite>(r#"{"path_rewrites": [{"pattern": "(", "replacement": ""}]}"#);
        assert!(pattern.err().unwrap().contains("invalid pattern"));
        let unknown = instantiate::<Rewrite>(r#"{"strip": "/api"}"#).err().unwrap();
        assert!(unknown.contains("unknown field `strip`"), "{unknown}");
        let relative = instantiate::<Rewrite>(r#"{"add_prefix": "v2"}"#).err().unwrap();
        assert!(relative.contains("must start with '/'"), "{relative}");
        // A prefix the host would refuse on every request is refused at load.
        let encoded = instantiate::<Rewrite>(r#"{"add_prefix": "/a%2Fb"}"#).err().unwrap();
        assert!(encoded.contains("path prefix \"/a%2Fb\": %2F is a path the host refuses"), "{encoded}");
        // Balanced only once wrapped to match the whole path: still refused.
        let unbalanced = instantiate::<Rewrite>(r#"{"redirects": [{"pattern": "a)(b", "to": "/"}]}"#);
        assert!(unbalanced.err().unwrap().contains("invalid pattern"));
    }

    #[test]
    fn a_reference_to_no_group_is_refused() {
        let rule = |replacement: &str| {
            let config =
                format!(r#"{{"path_rewrites": [{{"pattern": "^/u/(\\d+)$", "replacement": "{replacement}"}}]}}"#);
            instantiate::<Rewrite>(&config)
        };
        let ambiguous = rule("/users/$1_profile").err().unwrap();
        assert!(ambiguous.contains("write `${1}_profile`"), "{ambiguous}");
        let redirect = r#"{"redirects": [{"pattern": "^/u/(\\d+)$", "to": "/v/$1a"}]}"#;
        assert!(instantiate::<Rewrite>(redirect).err().unwrap().contains("write `${1}a`"));

        let braced_digit = rule("/users/${1_profile}").err().unwrap();
        assert!(braced_digit.contains("write `${1}_profile`"), "{braced_digit}");

        // A reference to a group the pattern lacks, by number or by name.
        let beyond = rule("/users/$2").err().unwrap();
        assert!(beyond.contains("`2` names no group") && beyond.contains("groups 1 to 1 and names []"), "{beyond}");
        let named = r#"{"path_rewrites": [{"pattern": "^/u/(?P<id>\\d+)$", "replacement": "/users/${idd}"}]}"#;
        let misspelt = instantiate::<Rewrite>(named).err().unwrap();
        assert!(misspelt.contains("`idd` names no group") && misspelt.contains("names [id]"), "{misspelt}");
        assert!(instantiate::<Rewrite>(&named.replace("${idd}", "${id}")).is_ok());
        assert!(rule("/users/${a$1b}").err().unwrap().contains("`a$1b` names no group"));
        assert!(rule("/users/$0").is_ok(), "group 0 is the whole match");

        // Braced, numbered, named and escaped references are fine.
        let mut braced = rule("/users/${1}_profile/$1/$$1_x").unwrap();
        let req = Request::new("GET", "/u/42");
        braced.on_request(&req);
        assert_eq!(req.path(), "/users/42_profile/42/$1_x");
    }

    #[test]
    fn every_redirect_status_and_dropping_the_query() {
        for status in [301, 302, 307, 308] {
            let config = format!(
                r#"{{"redirects": [{{"pattern": "^/a$", "to": "/b", "status": {status}, "keep_query": false}}]}}"#
            );
            let Verdict::Respond(reply) = rewrite(&config).on_request(&Request::new("GET", "/a?x=1")) else {
                panic!("expected a {status} redirect");
            };
            assert_eq!(reply.status, status);
            assert_eq!(reply.header_value("location"), Some("/b"));
        }
    }
}
