//! What a request must satisfy before it is routed: size limits on its head
//! and body, a valid `Host`, and no `CDN-Loop` member naming this node.
//! Pingora's parser already refuses malformed framing (bad chunk sizes,
//! conflicting `Content-Length` and `Transfer-Encoding`); these are the
//! checks it leaves to the application.

use pingora::http::RequestHeader;

use super::reply::ErrorReply;
use crate::config::ServerConfig;
use crate::route::normalize;

/// Refuse the request head, with the status and reason, or let it through.
pub fn check(header: &RequestHeader, server: &ServerConfig) -> Result<(), ErrorReply> {
    let limits = &server.request_limits;
    let uri_len = header.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > limits.max_uri_bytes {
        let message = format!("request target of {uri_len} bytes exceeds {}", limits.max_uri_bytes);
        return Err(ErrorReply::new(414, message));
    }
    if header.headers.len() > limits.max_headers {
        let message = format!("{} request headers exceed {}", header.headers.len(), limits.max_headers);
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
    check_framing(header).map_err(|message| ErrorReply::new(400, message))?;
    check_host(header).map_err(|message| ErrorReply::new(400, message))?;
    if let Some(seen) = loop_seen(header, &server.node_id) {
        let node = &server.node_id;
        let message = format!("loop detected: this request already passed through node {node:?} (CDN-Loop: {seen})");
        return Err(ErrorReply::new(508, message));
    }
    Ok(())
}

/// The `CDN-Loop` header (RFC 8586) when one of its members is `node`.
fn loop_seen<'a>(header: &'a RequestHeader, node: &str) -> Option<&'a str> {
    header.headers.get_all("cdn-loop").iter().filter_map(|v| v.to_str().ok()).find(|value| {
        value.split(',').any(|member| member.split(';').next().is_some_and(|id| id.trim().eq_ignore_ascii_case(node)))
    })
}

/// RFC 9112 §3.2: an HTTP/1.1 request needs exactly one `Host`, and it must
/// be a valid authority. (HTTP/2 carries `:authority` in the URI instead.)
fn check_host(header: &RequestHeader) -> std::result::Result<(), String> {
    let mut hosts = header.headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err("more than one Host header".into()),
        (None, _) if header.version == http::Version::HTTP_11 && header.uri.authority().is_none() => {
            Err("an HTTP/1.1 request needs a Host header".into())
        }
        (Some(value), None) => match value.to_str() {
            Ok(host) if normalize::valid_host(host) => Ok(()),
            _ => Err(format!("invalid Host header {value:?}")),
        },
        (None, _) => Ok(()),
    }
}

/// RFC 9112 §6.1 and §6.3: a request with both `Content-Length` and
/// `Transfer-Encoding` is the classic smuggling vector, and a
/// `Transfer-Encoding` whose last coding is not `chunked` has no knowable
/// length. Both are refused (and the connection closed) rather than guessed.
fn check_framing(header: &RequestHeader) -> Result<(), String> {
    let encodings: Vec<&str> = header
        .headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let lengths: Vec<&[u8]> =
        header.headers.get_all(http::header::CONTENT_LENGTH).iter().map(|v| v.as_bytes()).collect();
    if !encodings.is_empty() && !lengths.is_empty() {
        return Err("both Content-Length and Transfer-Encoding: refused, as request smuggling".into());
    }
    if encodings.last().is_some_and(|last| !last.eq_ignore_ascii_case("chunked")) {
        return Err(format!("Transfer-Encoding {:?} does not end in chunked", encodings.join(", ")));
    }
    if lengths.windows(2).any(|pair| pair[0] != pair[1]) {
        return Err("conflicting Content-Length headers".into());
    }
    Ok(())
}
