//! Reading who a request comes from: a configurable client key, and cookies.

use serde::Deserialize;

use crate::{EditError, Request};

/// What identifies a client in a filter's config: `"ip"` (the client
/// address) or `"header:<name>"`, whose value is used when present and the
/// client address otherwise. Anything else is refused when the config loads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ClientKey {
    #[default]
    Ip,
    Header(String),
}

impl TryFrom<String> for ClientKey {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        match value.strip_prefix("header:") {
            _ if value == "ip" => Ok(Self::Ip),
            // A name no header can have (`header: x-user-id`) would never
            // match, and every client would quietly count by address.
            Some(name) if is_token(name) => Ok(Self::Header(name.to_string())),
            Some(name) if !name.is_empty() => Err(format!("key {value:?}: {name:?} is not a header name")),
            _ => Err(format!("key {value:?} must be \"ip\" or \"header:<name>\"")),
        }
    }
}

impl ClientKey {
    /// This request's key: the header's value, or the client address.
    pub fn resolve(&self, req: &Request) -> String {
        match self {
            Self::Header(name) => req.header(name).unwrap_or_else(|| req.client_ip()),
            Self::Ip => req.client_ip(),
        }
    }

    /// The rate-limit bucket this request counts against. With a header, its
    /// values and the addresses it falls back to never share a bucket (a
    /// client cannot send another's address as its key). An IPv6 client
    /// counts by its /64, the block one subscriber gets: by whole address,
    /// one host could take a fresh bucket on every request.
    pub fn bucket(&self, req: &Request) -> String {
        match self {
            Self::Ip => network(req.client_ip()),
            Self::Header(name) => match req.header(name) {
                Some(value) => ["h:", &value].concat(),
                None => ["ip:", &network(req.client_ip())].concat(),
            },
        }
    }
}

/// An IPv6 address as its /64 (`2001:db8:1:2::/64`); any other address as
/// it is.
fn network(ip: String) -> String {
    match ip.parse::<std::net::Ipv6Addr>() {
        Ok(v6) if v6.to_ipv4_mapped().is_none() => {
            let masked = std::net::Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX));
            [&masked.to_string(), "/64"].concat()
        }
        _ => ip,
    }
}

/// Whether `text` is an HTTP token (RFC 9110, 5.6.2): the syntax of a header
/// name, and of a cookie name (RFC 6265, 4.1.1).
pub fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Fields only the host writes: the framing and the hop-by-hop fields.
/// Setting one is an `InvalidHeaderName`.
pub const HOST_OWNED: [&str; 8] =
    ["content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

/// Fields only the host removes: the framing. Removing one does nothing
/// (`remove_header`) or is refused (`remove_response_header`).
pub const FRAMING: [&str; 2] = ["content-length", "transfer-encoding"];

fn is_one_of(names: &[&str], name: &str) -> bool {
    names.iter().any(|owned| owned.eq_ignore_ascii_case(name))
}

/// Whether the host lets a filter remove header `name`: a token of at most
/// [`MAX_HEADER_NAME_BYTES`], and not [`FRAMING`].
pub fn check_removal(name: &str) -> Result<(), EditError> {
    if name.len() > MAX_HEADER_NAME_BYTES {
        return Err(EditError::LimitExceeded(format!("header name longer than {MAX_HEADER_NAME_BYTES} bytes")));
    }
    if !is_token(name) || is_one_of(&FRAMING, name) {
        return Err(EditError::InvalidHeaderName(name.to_string()));
    }
    Ok(())
}

/// The longest header name the host lets a filter write.
pub const MAX_HEADER_NAME_BYTES: usize = 256;

/// Whether the host takes `name: value` from a filter, the value's length
/// aside (a per-route limit): a token name, not [`HOST_OWNED`], of at most
/// [`MAX_HEADER_NAME_BYTES`], and, as the host's `HeaderValue`, a value with
/// no control character but tab. A filter can check its config with it.
pub fn check_header(name: &str, value: &str) -> Result<(), EditError> {
    check_removal(name)?;
    if is_one_of(&HOST_OWNED, name) {
        return Err(EditError::InvalidHeaderName(name.to_string()));
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(EditError::InvalidHeaderValue(name.to_string()));
    }
    Ok(())
}

/// Check a cookie name from a filter's config, so a typo fails at load
/// instead of never matching.
pub fn check_cookie_name(name: &str) -> Result<(), String> {
    if is_token(name) { Ok(()) } else { Err(format!("cookie name {name:?} must be an HTTP token")) }
}

/// The value of cookie `name`, if the request carries it (and it is not empty).
pub fn cookie(req: &Request, name: &str) -> Option<String> {
    req.header_values("cookie").iter().find_map(|header| {
        header.split(';').find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n == name && !v.is_empty()).then(|| v.to_string())
        })
    })
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_what_a_header_or_cookie_name_may_be() {
        assert!(is_token("x-user-id") && is_token("ab-checkout") && is_token("__Host-id"));
        for bad in ["", "a b", "a;b", "a=b", "é", "a\"b"] {
            assert!(!is_token(bad), "{bad:?}");
            assert!(check_cookie_name(bad).unwrap_err().contains("HTTP token"), "{bad:?}");
        }
    }

    #[test]
    fn keys_parse_and_resolve() {
        let key = |s: &str| ClientKey::try_from(s.to_string());
        assert_eq!(key("ip"), Ok(ClientKey::Ip));
        assert_eq!(key("header:x-user-id"), Ok(ClientKey::Header("x-user-id".into())));
        assert!(key("header:").unwrap_err().contains("must be"));
        assert!(key("header: x-user-id").unwrap_err().contains("is not a header name"));
        assert!(key("cookie:a").is_err());
        let req = Request::new("GET", "/").with_client_ip("10.0.0.1").with_header("x-user-id", "alice");
        assert_eq!(ClientKey::Header("x-user-id".into()).resolve(&req), "alice");
        assert_eq!(ClientKey::Header("x-missing".into()).resolve(&req), "10.0.0.1");
        assert_eq!(ClientKey::Ip.resolve(&req), "10.0.0.1");
    }

    #[test]
    fn cookies() {
        let req = Request::new("GET", "/").with_header("cookie", "a=1; session=xyz; empty=");
        assert_eq!(cookie(&req, "session").as_deref(), Some("xyz"));
        assert_eq!(cookie(&req, "empty"), None);
        assert_eq!(cookie(&req, "missing"), None);
    }
}
