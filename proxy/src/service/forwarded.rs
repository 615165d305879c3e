//! What a request's forwarding headers are believed for. A client's own are
//! not: the scheme is the listener's and the client is the socket's peer. A
//! trusted proxy's (`server.trusted_proxies`: the edges in front of a
//! regional tier, a load balancer) are: its `X-Forwarded-Proto: https`, the
//! client its `X-Forwarded-For` names, and the host or path it says the
//! client asked for.

use std::net::IpAddr;

use pingora::proxy::Session;

use super::headers::{X_FORWARDED_FOR, X_FORWARDED_PROTO, joined_lines};
use crate::config::IpNet;

/// The socket's peer, when it is an IP address; an IPv4 client of a
/// dual-stack listener as IPv4 (`203.0.113.7`, not `::ffff:203.0.113.7`), so
/// it is one client whichever listener it came through.
pub(super) fn peer_ip(session: &Session) -> Option<IpAddr> {
    session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_canonical())
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

/// Whether the socket's peer is one of the `trusted` proxies, whose
/// forwarding headers are believed.
pub(super) fn from_trusted_proxy(session: &Session, trusted: &[IpNet]) -> bool {
    peer_ip(session).is_some_and(|peer| is_trusted(peer, trusted))
}

/// Headers with which a client names another host, port, path prefix or
/// path than the one it asked for. No cache key holds them, and origins act
/// on them: links and redirects built from `X-Forwarded-Host` (cached, they
/// would point every client at the one's pick), or Symfony's and IIS's
/// `X-Original-URL` serving a path whose route has filters the request
/// never met.
const CLAIMS_OF_ANOTHER_TARGET: [&str; 6] =
    ["forwarded", "x-forwarded-host", "x-forwarded-port", "x-forwarded-prefix", "x-original-url", "x-rewrite-url"];

/// Remove a client's [`CLAIMS_OF_ANOTHER_TARGET`], before the filters run
/// (which may set them). Not for a trusted proxy's request, whose are kept.
pub(super) fn drop_claims_of_another_target(session: &mut Session) {
    let header = session.req_header_mut();
    // One pass over the names the request has, not a lookup of each claim.
    let claimed: Vec<http::HeaderName> =
        header.headers.keys().filter(|name| CLAIMS_OF_ANOTHER_TARGET.contains(&name.as_str())).cloned().collect();
    for name in claimed {
        header.remove_header(&name);
    }
}

/// The scheme the upstream is told (`X-Forwarded-Proto`), one of two, as
/// the cache key holds it: `https` on a TLS listener, whatever the client
/// says; on a plain one, `https` only when a trusted proxy says so (a
/// regional tier hears from its edges over plain HTTP); `http` otherwise.
pub(super) fn forwarded_proto(session: &Session, from_trusted_proxy: bool) -> &'static str {
    if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
        return "https";
    }
    let said_https = || {
        session.req_header().headers.get(X_FORWARDED_PROTO).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
    };
    if from_trusted_proxy && said_https() { "https" } else { "http" }
}

/// The client a request comes from, as filters see it: the socket's peer;
/// from a trusted proxy, the rightmost `X-Forwarded-For` address that is
/// not itself trusted (nginx's `real_ip_recursive`). The walk stops at an
/// entry that is no address, so the address right of it is taken.
pub(super) fn client_ip(session: &Session, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer_ip(session)?;
    if !is_trusted(peer, trusted) {
        return Some(peer);
    }
    let Some(forwarded) = joined_lines(&session.req_header().headers, &X_FORWARDED_FOR) else { return Some(peer) };
    Some(rightmost_untrusted(&forwarded, trusted).unwrap_or(peer))
}

/// The rightmost address of an `X-Forwarded-For` list that is not trusted,
/// or the last one read before an entry that is no address, or the list's
/// first; `None` if its last entry is no address.
fn rightmost_untrusted(list: &[u8], trusted: &[IpNet]) -> Option<IpAddr> {
    let mut client = None;
    for entry in list.rsplit(|b| *b == b',') {
        let Some(ip) = std::str::from_utf8(entry).ok().and_then(|e| forwarded_address(e.trim())) else { break };
        client = Some(ip);
        if !is_trusted(ip, trusted) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry's address: `203.0.113.7`, `2001:db8::1`, or
/// with a port as some load balancers write it (`203.0.113.7:4711`,
/// `[2001:db8::1]:4711`), or bracketed (`[2001:db8::1]`).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let ip =
        entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())).or_else(
            || entry.strip_prefix('[')?.strip_suffix(']')?.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6),
        )?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_rightmost_address_no_trusted_proxy_holds() {
        let trusted: Vec<IpNet> = ["10.0.0.0/8", "2001:db8::/32"].iter().map(|n| n.parse().unwrap()).collect();
        let client = |list: &str| rightmost_untrusted(list.as_bytes(), &trusted).map(|ip| ip.to_string());
        assert_eq!(client("203.0.113.7"), Some("203.0.113.7".into()));
        // A client's own entries left of the first untrusted one are not read.
        assert_eq!(client("192.0.2.1, 203.0.113.7, 10.1.2.3"), Some("203.0.113.7".into()));
        assert_eq!(client("198.51.100.9,2001:db8::1"), Some("198.51.100.9".into()));
        // Every entry a trusted proxy: the first is as far as anyone can say.
        assert_eq!(client("10.0.0.1, 10.0.0.2"), Some("10.0.0.1".into()));
        // Garbage stops the walk: the address right of it is taken.
        assert_eq!(client("203.0.113.7, unknown, 10.0.0.2"), Some("10.0.0.2".into()));
        assert_eq!(client("203.0.113.7, 10.0.0.2/8"), None);
        assert_eq!(client(""), None);
        // Ports and brackets, as some load balancers write them; IPv4-mapped
        // addresses as IPv4.
        assert_eq!(client("203.0.113.7:4711, 10.0.0.2:443"), Some("203.0.113.7".into()));
        assert_eq!(client("[2001:db9::1]:4711"), Some("2001:db9::1".into()));
        assert_eq!(client("[2001:db9::1], [2001:db8::2]"), Some("2001:db9::1".into()));
        assert_eq!(client("::ffff:203.0.113.7, ::ffff:10.0.0.1"), Some("203.0.113.7".into()));
    }

    #[test]
    fn address_blocks_hold_what_their_prefix_says() {
        let net = |text: &str| text.parse::<IpNet>().unwrap();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert!(net("10.0.0.0/8").contains(ip("10.255.0.1")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.0.0.1")), "a dual-stack listener's IPv4 peer");
        assert!(net("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!net("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(net("0.0.0.0/0").contains(ip("198.51.100.1")));
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(net("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!net("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        // IPv4-mapped blocks are the IPv4 blocks they map.
        assert!(net("::ffff:10.0.0.0/104").contains(ip("10.1.2.3")));
        assert!(!net("::ffff:10.0.0.0/104").contains(ip("11.0.0.1")));
        assert!(net("::ffff:192.0.2.7").contains(ip("192.0.2.7")));
        assert!(net("::ffff:0:0/96").contains(ip("198.51.100.1")));
        for bad in ["10.0.0.0/33", "2001:db8::/129", "10.0.0/8", "10.0.0.0/x", "example.com", "::ffff:10.0.0.0/64"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }
}
