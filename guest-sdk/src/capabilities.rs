//! Types of the host capabilities, shared by the real and the mock host.

use std::fmt;
use std::time::Duration;

/// The outcome of a rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed; when it may, the cost was taken.
    pub allowed: bool,
    /// The bucket's capacity (the policy's burst).
    pub limit: u32,
    /// Requests left after this check.
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset_after: Duration,
    /// When refused, time until the cost could be taken.
    pub retry_after: Duration,
    /// Time an empty bucket takes to refill: the policy's window.
    pub window: Duration,
}

/// Why a rate-limit check could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// No policy with this name is configured.
    UnknownPolicy(String),
    /// The cost is 0 or larger than the policy's burst.
    InvalidCost(u32),
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownPolicy(p) => write!(f, "no rate-limit policy named {p:?}"),
            Self::InvalidCost(c) => write!(f, "invalid cost {c}"),
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    UnknownKeyset(String),
    Malformed(String),
    AlgorithmNotAllowed(String),
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKeyset(k) => write!(f, "no keyset named {k:?}"),
            Self::Malformed(m) => write!(f, "malformed token: {m}"),
            Self::AlgorithmNotAllowed(a) => write!(f, "algorithm {a} is not allowed"),
            Self::UnknownKey => f.write_str("no key matches the token"),
            Self::BadSignature => f.write_str("bad signature"),
            Self::Expired => f.write_str("the token has expired"),
            Self::NotYetValid => f.write_str("the token is not valid yet"),
            Self::WrongIssuer => f.write_str("wrong issuer"),
            Self::WrongAudience => f.write_str("wrong audience"),
        }
    }
}

/// Why a key-value operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    /// No store with this name is configured.
    UnknownStore(String),
    /// The store is read-only to filters (`filters_may_write = false`).
    ReadOnly(String),
    /// The key is empty or longer than 256 bytes.
    InvalidKey(String),
    /// The value is longer than the store's `max_value_bytes`, given.
    ValueTooLarge(u32),
    /// The store holds `max_keys` keys (expired ones dropped first, but for
    /// those that expired within the last second): the new key was not
    /// added.
    StoreFull(String),
    /// `increment` on a value that is not a whole number, or past `i64`.
    NotANumber(String),
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownStore(s) => write!(f, "no key-value store named {s:?}"),
            Self::ReadOnly(s) => write!(f, "key-value store {s:?} is read-only to filters"),
            Self::InvalidKey(k) => write!(f, "invalid key: {k}"),
            Self::ValueTooLarge(n) => write!(f, "the value is longer than the store's max_value_bytes ({n})"),
            Self::StoreFull(s) => write!(f, "key-value store {s:?} is full"),
            Self::NotANumber(m) => f.write_str(m),
        }
    }
}

/// A request a filter sends to an upstream group its chain entry was
/// granted (`outbound::fetch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRequest {
    pub method: String,
    /// The path with its query, starting with `/`.
    pub path_with_query: String,
    /// Header fields. `host` and `x-request-id` are the host's unless set
    /// (once); `content-length`, `cdn-loop` and the hop-by-hop fields are
    /// refused.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl OutboundRequest {
    /// A request of `method` for `path_with_query`, without headers or body.
    pub fn new(method: &str, path_with_query: &str) -> Self {
        Self { method: method.into(), path_with_query: path_with_query.into(), headers: Vec::new(), body: Vec::new() }
    }

    /// With one more header field.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// With a body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// An upstream's whole answer to an [`OutboundRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundResponse {
    pub status: u16,
    /// Header fields, names lower-case, the values of one name together
    /// and in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl OutboundResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Why a fetch got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The chain entry's `outbound` does not name the group.
    NotGranted(String),
    /// Called outside `on_request`.
    Unavailable(String),
    /// A method, path or header the host will not send.
    InvalidRequest(String),
    /// Past a limit: fetches per call, or a body's size.
    LimitExceeded(String),
    /// No server of the group took the connection.
    Unreachable(String),
    /// No answer within the group's timeouts.
    Timeout,
    /// An answer the host could not read as HTTP.
    BadResponse(String),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotGranted(m) => write!(f, "not granted: {m}"),
            Self::Unavailable(m) => write!(f, "unavailable: {m}"),
            Self::InvalidRequest(m) => write!(f, "invalid request: {m}"),
            Self::LimitExceeded(m) => write!(f, "limit exceeded: {m}"),
            Self::Unreachable(m) => write!(f, "unreachable: {m}"),
            Self::Timeout => f.write_str("no answer within the upstream's timeouts"),
            Self::BadResponse(m) => write!(f, "bad response: {m}"),
        }
    }
}
