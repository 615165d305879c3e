//! Normalization of what routing reads, so that a path cannot be dressed up
//! to reach one route's upstream while matching another route's filters.
//!
//! Path rules, applied in order (RFC 3986 §6.2.2):
//! 1. Percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!    decoded; every other escape is kept, with upper-case hex. A malformed
//!    escape is refused. So are an encoded `/` (`%2F`), an encoded or raw
//!    backslash and an encoded NUL: origins disagree on whether they separate
//!    segments (Envoy's `path_with_escaped_slashes_action` exists for this),
//!    so a route prefix could not be trusted to cover them.
//! 2. Runs of `/` collapse to one.
//! 3. `.` segments are removed and `..` removes the segment before it (§5.2.4).
//!    A `..` that would climb above the root is refused. So is a dot segment
//!    with `;` parameters (`/public/..;/admin`): Tomcat and Spring drop the
//!    parameters and then climb, so the origin would serve another route's
//!    path.
//!
//! The normalized path is also what the upstream receives, so the route
//! decision and the upstream's view of the path agree. Routing then compares
//! it without its segments' `;` parameters ([`without_parameters`]), as
//! Tomcat, Jetty and Spring read it.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("malformed percent-escape in path")]
    BadEscape,
    #[error("path climbs above the root with '..'")]
    AboveRoot,
    #[error("path holds an encoded '/', a backslash or an encoded NUL, which origins read differently")]
    AmbiguousSeparator,
    #[error("path holds a '.' or '..' segment with ';' parameters, which some origins read as a dot segment")]
    DotSegmentWithParameters,
}

/// The normalized form of `path` (without query).
pub fn path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if raw.contains('\\') {
        return Err(PathError::AmbiguousSeparator);
    }
    let needs_work = raw.contains(['%', ';']) || raw.contains("//") || raw.split('/').any(|s| s == "." || s == "..");
    if !needs_work {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode_unreserved(raw)?;
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = parts.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, segment) in parts.iter().enumerate() {
        match *segment {
            "" => trailing_slash = i == last,
            "." => trailing_slash = i == last,
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = i == last;
            }
            s if s.contains(';') && matches!(s.split(';').next(), Some("." | "..")) => {
                return Err(PathError::DotSegmentWithParameters);
            }
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// The path routing compares: a normalized `path` without its segments' `;`
/// parameters, and without the empty segments that leaves. Tomcat, Jetty and
/// Spring drop the parameters (`/admin;jsessionid=1/users` is `/admin/users`
/// to them), so the route whose prefix covers what they serve must be the
/// one whose filters run. The upstream still gets the parameters.
pub fn without_parameters(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let segments: Vec<&str> = path.split('/').skip(1).map(|s| s.split(';').next().unwrap_or_default()).collect();
    let last = segments.len().saturating_sub(1);
    let mut out = String::with_capacity(path.len());
    for (i, segment) in segments.iter().enumerate() {
        if !segment.is_empty() || i == last {
            out.push('/');
            out.push_str(segment);
        }
    }
    Cow::Owned(out)
}

/// `uri` with its path and query replaced by `path_and_query`, keeping its
/// scheme and authority: an HTTP/2 request's host is its URI's authority,
/// and the upstream's `Host` is made from it.
pub fn with_path_and_query(uri: &http::Uri, path_and_query: &str) -> Option<http::Uri> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

/// An unreserved character (RFC 3986 §2.3): `A-Z a-z 0-9 - . _ ~`.
pub fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// The byte that the escape `%XX` at `bytes[at]` stands for, if `XX` are
/// two hex digits.
fn escaped_byte(bytes: &[u8], at: usize) -> Option<u8> {
    let hex = bytes.get(at + 1..at + 3).filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))?;
    u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// `text` with every `%XX` escape decoded, if it has no malformed one and
/// the result is UTF-8 (an admin API path segment or query value).
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(escaped_byte(bytes, i)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn decode_unreserved(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            // Multi-byte UTF-8 is copied one char at a time.
            let ch = raw[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        let value = escaped_byte(bytes, i).ok_or(PathError::BadEscape)?;
        if matches!(value, b'/' | b'\\' | 0) {
            return Err(PathError::AmbiguousSeparator);
        }
        if is_unreserved(value) {
            out.push(value as char);
        } else {
            out.push_str(&format!("%{value:02X}"));
        }
        i += 3;
    }
    Ok(out)
}

/// Whether a `Host` value is a plausible authority (RFC 3986 §3.2.2): a
/// registered name, an IPv4 address or a bracketed IPv6 literal, then an
/// optional port. No spaces, slashes, `@` or other delimiters.
pub fn valid_host(raw: &str) -> bool {
    let (host, port) = match raw.strip_prefix('[') {
        Some(rest) => {
            let Some((v6, after)) = rest.split_once(']') else { return false };
            if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
                return false;
            }
            match after {
                "" => return true,
                _ => match after.strip_prefix(':') {
                    Some(port) => ("v6", Some(port)),
                    None => return false,
                },
            }
        }
        None => match raw.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (raw, None),
        },
    };
    let host_ok = !host.is_empty() && host.len() <= 255 && host.bytes().all(is_unreserved);
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

/// The host name routing compares: lower-case, without port or trailing dot.
pub fn host(raw: &str) -> Cow<'_, str> {
    let without_port =
        match raw.rsplit_once(':') {
            // An IPv6 literal keeps its colons inside brackets.
            Some((h, port)) if !h.ends_with(']') || raw.starts_with('[') => {
                if port.bytes().all(|b| b.is_ascii_digit()) { h } else { raw }
            }
            _ => raw,
        };
    let trimmed = without_port.trim_end_matches('.');
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for (raw, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("//a///b/", "/a/b/"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/../b", "/b"),
            ("/%61pi/x", "/api/x"),
            ("/a%20b", "/a%20b"),
            ("/a%2e%2e/b", "/a../b"),
            ("/a/.", "/a/"),
        ] {
            assert_eq!(path(raw).unwrap(), want, "{raw}");
        }
        assert_eq!(path("/.."), Err(PathError::AboveRoot));
        // Escaped dots are still dots once decoded.
        assert_eq!(path("/%2E%2E/x"), Err(PathError::AboveRoot));
        assert_eq!(path("/a/%zz"), Err(PathError::BadEscape));
        assert_eq!(path("/a/%4"), Err(PathError::BadEscape));
        assert_eq!(path("a"), Err(PathError::NotAbsolute));
        for ambiguous in ["/a%2fb", "/a%2F..%2Fb", "/a%5Cb", "/a\\b", "/a%00b"] {
            assert_eq!(path(ambiguous), Err(PathError::AmbiguousSeparator), "{ambiguous}");
        }
        // Dot segments with parameters, which Tomcat resolves after dropping
        // them, are refused; parameters elsewhere are kept as they are.
        for dotted in ["/public/..;/admin", "/a/.;x/b", "/%2e%2e;jsessionid=1/admin", "/a/..;"] {
            assert_eq!(path(dotted), Err(PathError::DotSegmentWithParameters), "{dotted}");
        }
        assert_eq!(path("/shop;jsessionid=1/cart").unwrap(), "/shop;jsessionid=1/cart");
        assert_eq!(path("/a/..b;x").unwrap(), "/a/..b;x");
    }

    #[test]
    fn routing_drops_segment_parameters() {
        for (normal, want) in [
            ("/admin;jsessionid=1/users", "/admin/users"),
            ("/admin;x", "/admin"),
            ("/;x/admin", "/admin"),
            ("/admin/;x", "/admin/"),
            ("/a;b;c/d;e/", "/a/d/"),
            ("/;x", "/"),
        ] {
            assert_eq!(without_parameters(normal), want, "{normal}");
        }
        assert!(matches!(without_parameters("/plain/path"), Cow::Borrowed("/plain/path")));
    }

    #[test]
    fn a_new_target_keeps_the_authority() {
        let h2: http::Uri = "https://example.com:8443/old?x=1".parse().unwrap();
        assert_eq!(with_path_and_query(&h2, "/new?y=2").unwrap(), "https://example.com:8443/new?y=2");
        let h1: http::Uri = "/old".parse().unwrap();
        assert_eq!(with_path_and_query(&h1, "/new").unwrap(), "/new");
        assert_eq!(with_path_and_query(&h1, "/a b"), None);
    }

    #[test]
    fn host_validity() {
        for good in ["example.com", "example.com:8080", "127.0.0.1:1", "[::1]", "[::1]:443", "a_b.local"] {
            assert!(valid_host(good), "{good}");
        }
        for bad in ["", "exa mple.com", "a.com/evil", "user@a.com", "a.com:", "a.com:80x", "[::1", "[::1]x", "a:b:c"] {
            assert!(!valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(host("Example.COM:8080"), "example.com");
        assert_eq!(host("example.com."), "example.com");
        assert_eq!(host("[::1]:80"), "[::1]");
        assert_eq!(host("localhost"), "localhost");
    }
}
