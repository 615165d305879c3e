//! What a request must satisfy before it is routed: size limits on its head
//! and body, a valid `Host`, and no `CDN-Loop` member naming this node.
//! Pingora's parser already refuses malformed framing before this runs: bad
//! chunk sizes, differing `Content-Length`s, a `Transfer-Encoding` that does
//! not end in `chunked`, and duplicate `Host`s (`validate_request`); with both
//! `Content-Length` and `Transfer-Encoding` it drops the length and closes the
//! connection after the response. These are the checks it leaves to us.

use pingora::http::RequestHeader;
use pingora::protocols::http::authority::{RawTargetAuthority, raw_target_authority};

use super::reply::ErrorReply;
use crate::config::ServerConfig;
use crate::route::normalize;

/// Refuse the request head, with the status and reason, or let it through.
pub fn check(header: &RequestHeader, server: &ServerConfig) -> Result<(), ErrorReply> {
    let limits = &server.request_limits;
    let uri_len = header.raw_path().len();
    if uri_len > limits.max_uri_bytes {
        let message = format!("request target of {uri_len} bytes exceeds {}", limits.max_uri_bytes);
        return Err(ErrorReply::new(414, message));
    }
    let header_count = super::headers::header_count(&header.headers);
    if header_count > limits.max_headers {
        let message = format!("{header_count} request headers exceed {}", limits.max_headers);
        return Err(ErrorReply::new(431, message));
    }
    let header_bytes: usize = header.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    if header_bytes > limits.max_header_bytes {
        let message = format!("request headers of {header_bytes} bytes exceed {}", limits.max_header_bytes);
        return Err(ErrorReply::new(431, message));
    }
    let declared_body = header.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    if declared_body.is_some_and(|len: u64| len > limits.max_body_bytes) {
        let message = format!("request body exceeds {} bytes", limits.max_body_bytes);
        return Err(ErrorReply::new(413, message));
    }
    check_target(header).map_err(|message| ErrorReply::new(400, message))?;
    check_host(header).map_err(|message| ErrorReply::new(400, message))?;
    if let Some(seen) = loop_seen(header, &server.node_id) {
        let node = &server.node_id;
        let message = format!("loop detected: this request already passed through node {node:?} (CDN-Loop: {seen})");
        return Err(ErrorReply::new(508, message));
    }
    Ok(())
}

/// The `CDN-Loop` header (RFC 8586) when one of its members is `node`.
/// Read as bytes: a line with a byte past ASCII is still a line this node
/// adds its member to (joining all lines into one), so passing over such
/// lines let one `é` hide a loop until the headers outgrew their limit.
fn loop_seen(header: &RequestHeader, node: &str) -> Option<String> {
    let seen = header.headers.get_all(super::headers::CDN_LOOP).iter().find(|value| {
        value.as_bytes().split(|&b| b == b',').any(|member| {
            let id = member.split(|&b| b == b';').next().unwrap_or_default();
            id.trim_ascii().eq_ignore_ascii_case(node.as_bytes())
        })
    })?;
    Some(String::from_utf8_lossy(seen.as_bytes()).into_owned())
}

/// RFC 9112 §3.2: an HTTP/1.1 request needs a `Host`, and it must be a valid
/// authority. (HTTP/2 carries `:authority` in the URI instead; Pingora has
/// already refused a duplicate `Host`.)
fn check_host(header: &RequestHeader) -> std::result::Result<(), String> {
    match header.headers.get(http::header::HOST) {
        None if header.version == http::Version::HTTP_11 && header.uri.authority().is_none() => {
            Err("an HTTP/1.1 request needs a Host header".into())
        }
        None => Ok(()),
        Some(value) => match value.to_str() {
            Ok(host) if normalize::valid_host(host) => Ok(()),
            _ => Err(format!("invalid Host header {value:?}")),
        },
    }
}

/// RFC 9112 §3.2: the request target is a path (origin-form) or an http(s)
/// URL (absolute-form). Pingora keeps any other target's bytes for the
/// upstream but gives routing the path `/`, so the request would reach the
/// `/` route's filters while the origin read another path.
fn check_target(header: &RequestHeader) -> std::result::Result<(), String> {
    let raw = header.raw_path();
    if raw.first() == Some(&b'/') {
        return Ok(());
    }
    match absolute_form_authority(header) {
        Some(authority) if normalize::valid_host(authority) => Ok(()),
        Some(authority) => Err(format!("invalid authority {authority:?} in the request target")),
        None => Err(format!("request target {:?} is neither a path nor an http(s) URL", String::from_utf8_lossy(raw))),
    }
}

/// The authority of an absolute-form target (`GET http://host/path`), which
/// names the request's host (RFC 9112 §3.2.2); `None` for any other form.
pub fn absolute_form_authority(header: &RequestHeader) -> Option<&str> {
    match raw_target_authority(header.raw_path()) {
        RawTargetAuthority::Absolute { scheme, authority, .. }
            if scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https") =>
        {
            std::str::from_utf8(authority).ok()
        }
        _ => None,
    }
}
