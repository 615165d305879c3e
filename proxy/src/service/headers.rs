//! Small header helpers for the request path: placeholders for a head the
//! filters hold, the client IP as text, and list-valued headers.

use std::borrow::Cow;

use http::header::AsHeaderName;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

/// Names the request path looks up on every request, parsed once: a lookup
/// by `&str` parses and validates the name first.
pub(crate) const CDN_LOOP: HeaderName = HeaderName::from_static("cdn-loop");
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What the session holds while a filter has its request head: built from
/// `http`'s defaults, which allocate and parse nothing (`build_no_case` did
/// both, on every request with filters).
pub(super) fn empty_request() -> RequestHeader {
    http::Request::new(()).into_parts().0.into()
}

/// What the session holds while the filters have the response head.
pub(super) fn empty_response() -> ResponseHeader {
    http::Response::new(()).into_parts().0.into()
}

/// `ip` as text. IPv4 is written by hand: `Display` goes through the
/// formatting machinery, about 1,300 instructions on every request.
pub(super) fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else { return ip.to_string() };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// Every line of header `name`, joined by ", " in order, as one value (RFC
/// 9110, 5.3); `None` if the message has none. One line is not copied.
pub(crate) fn joined_lines(headers: &http::HeaderMap, name: impl AsHeaderName) -> Option<Cow<'_, [u8]>> {
    joined_by(headers, name, b", ")
}

/// Every line of header `name`, joined by `separator`; one is not copied.
fn joined_by<'h>(headers: &'h http::HeaderMap, name: impl AsHeaderName, separator: &[u8]) -> Option<Cow<'h, [u8]>> {
    let mut lines = headers.get_all(name).iter();
    let mut joined = Cow::Borrowed(lines.next()?.as_bytes());
    for line in lines {
        let joined = joined.to_mut();
        joined.extend_from_slice(separator);
        joined.extend_from_slice(line.as_bytes());
    }
    Some(joined)
}

/// RFC 9110 §7.6.1: remove the hop-by-hop fields of a response, and those
/// its `Connection` names, before it is forwarded or stored. Pingora does so
/// for requests, and writes `Connection` itself on a response, but passes
/// the others on to HTTP/1 clients and into the cache (an origin's
/// `Connection: close, X-Backend` left `X-Backend` on every hit). A 101's
/// `Connection` and `Upgrade` are its handshake, left as they are, and a
/// 426 keeps its `Upgrade`, which it must carry (RFC 9110 §15.5.22); the
/// framing stays whatever `Connection` says (Pingora frames the message).
pub(super) fn remove_hop_by_hop(response: &mut ResponseHeader) {
    use crate::filters::host::{FRAMING, HOP_BY_HOP};
    if response.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let keeps_upgrade = response.status == http::StatusCode::UPGRADE_REQUIRED;
    let headers = &response.headers;
    let connection_tokens = || {
        headers.get_all(http::header::CONNECTION).into_iter().flat_map(|value| {
            value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|token| !token.is_empty())
        })
    };
    // Usually `Connection` says only `keep-alive` or `close`, and then no
    // other name needs to be looked for in it.
    let names_others = connection_tokens().any(|token| {
        !token.eq_ignore_ascii_case(b"close") && !HOP_BY_HOP.iter().any(|h| token.eq_ignore_ascii_case(h.as_bytes()))
    });
    let listed = |name: &str| connection_tokens().any(|token| token.eq_ignore_ascii_case(name.as_bytes()));
    let goes = |name: &HeaderName| {
        let name = name.as_str();
        // `Connection` is Pingora's to write.
        name != "connection"
            && !FRAMING.contains(&name)
            && !(keeps_upgrade && name == "upgrade")
            && (HOP_BY_HOP.contains(&name) || names_others && listed(name))
    };
    // One pass over the names the response has; nothing is allocated
    // unless one goes.
    let hop_by_hop: Vec<HeaderName> = headers.keys().filter(|name| goes(name)).cloned().collect();
    for name in hop_by_hop {
        response.remove_header(&name);
    }
}

/// How many headers a request has, its `Cookie` lines counted as one: HTTP/2
/// clients send each cookie on a line of its own, and the lines are the
/// one header they are over HTTP/1.1 (and reach the upstream as, see
/// [`joined_cookies`]). Admission and the filters' limit count alike, or a
/// request admitted with many cookie lines would fail every filter edit.
pub(crate) fn header_count(headers: &http::HeaderMap) -> usize {
    let cookie_lines = headers.get_all(http::header::COOKIE).iter().count();
    headers.len() - cookie_lines.saturating_sub(1)
}

/// The `Cookie` lines of an HTTP/2 request as the one line an HTTP/1.1 peer
/// expects, joined by "; " (RFC 9113 §8.2.3: browsers send each cookie on a
/// line of its own); `None` when there are fewer than two.
pub(super) fn joined_cookies(headers: &http::HeaderMap) -> Option<HeaderValue> {
    let mut lines = headers.get_all(http::header::COOKIE).iter();
    lines.next()?;
    lines.next()?;
    let joined = joined_by(headers, http::header::COOKIE, b"; ")?;
    // Lines that were values each are one joined by "; ".
    Some(HeaderValue::from_bytes(&joined).expect("joined header values are a header value"))
}

/// The value of list-valued header `name` with `member` appended, after
/// every line the message had (a list may come on several lines, and the
/// caller replaces them all: a `CDN-Loop` line dropped here would hide a
/// loop from the CDN that wrote it). Usually the header is absent and
/// `member` is the value as it is: no copy.
pub(crate) fn with_member(headers: &http::HeaderMap, name: impl AsHeaderName, member: HeaderValue) -> HeaderValue {
    match joined_lines(headers, name) {
        None => member,
        Some(earlier) => {
            let joined = [&earlier[..], b", ", member.as_bytes()].concat();
            // The parts are valid values, and so are they joined by ", ".
            HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)).unwrap_or(member)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn cookies_on_many_lines_make_one() {
        let mut headers = http::HeaderMap::new();
        headers.append("cookie", HeaderValue::from_static("a=1"));
        assert_eq!(joined_cookies(&headers), None, "one line stays as it is");
        headers.append("cookie", HeaderValue::from_static("b=2"));
        headers.append("cookie", HeaderValue::from_static("c=3"));
        assert_eq!(joined_cookies(&headers).unwrap(), "a=1; b=2; c=3");
    }

    #[test]
    fn with_member_keeps_every_line_of_the_list() {
        let mut headers = http::HeaderMap::new();
        let member = http::HeaderValue::from_static("edge");
        assert_eq!(super::with_member(&headers, &CDN_LOOP, member.clone()), "edge");
        headers.append("cdn-loop", http::HeaderValue::from_static("cdn-a"));
        headers.append("cdn-loop", http::HeaderValue::from_static("cdn-b; x=1"));
        assert_eq!(super::with_member(&headers, &CDN_LOOP, member), "cdn-a, cdn-b; x=1, edge");
    }

    #[test]
    fn hop_by_hop_fields_go_and_those_connection_names_with_them() {
        let response = |status: u16, headers: &[(&str, &str)]| {
            let mut response = ResponseHeader::build(status, None).unwrap();
            for (name, value) in headers {
                response.append_header(name.to_string(), *value).unwrap();
            }
            remove_hop_by_hop(&mut response);
            let mut left: Vec<String> = response.headers.keys().map(|n| n.to_string()).collect();
            left.dedup();
            left
        };
        let common =
            [("content-length", "5"), ("keep-alive", "timeout=5"), ("te", "trailers"), ("x-backend", "10.0.0.5")];
        // `Connection` naming nothing else: only the fixed hop-by-hop fields go.
        let mut headers = vec![("connection", "keep-alive")];
        headers.extend(common);
        assert_eq!(response(200, &headers), ["connection", "content-length", "x-backend"]);
        // What it names goes too, in any case and on any of its lines, but
        // never the framing.
        let mut headers = vec![("connection", "close"), ("connection", " X-Backend ,content-length")];
        headers.extend(common);
        assert_eq!(response(200, &headers), ["connection", "content-length"]);
        // A 426 keeps the `Upgrade` it must carry; a 101 is left whole.
        let upgrade = [("upgrade", "websocket"), ("trailer", "x")];
        assert_eq!(response(426, &upgrade), ["upgrade"]);
        assert_eq!(response(101, &upgrade), ["upgrade", "trailer"]);
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.100.255", "9.99.199.200", "::1", "2001:db8::8a2e:370:7334"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(super::ip_text(ip), ip.to_string());
        }
    }
}
