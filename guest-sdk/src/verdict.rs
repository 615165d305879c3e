//! The values a filter hands back to the host.

use std::fmt;

/// What a filter decides about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on to the next filter, then to the upstream.
    Continue,
    /// Answer the client now; the rest of the chain and the upstream are skipped.
    Respond(Reply),
}

impl Verdict {
    /// What a filter answers when the host refused one of its request
    /// edits: for a limit (the request already has as many headers as the
    /// route lets a filter leave, `limits.max_headers`), a 431, as a request
    /// with too many headers gets at admission, so a client cannot make the
    /// filter fail and count against the route's breaker. Any other refusal
    /// is a bug of the filter or its config: it traps, and the route's
    /// `on_error` decides.
    pub fn refused_edit(error: EditError) -> Self {
        match error {
            EditError::LimitExceeded(what) => {
                Self::Respond(Reply::new(431).body(format!("request header fields too large: {what}\n")))
            }
            other => panic!("{other}"),
        }
    }
}

/// A complete answer given by a filter instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code, a final one (200..=599); the host fails the filter otherwise.
    pub status: u16,
    /// Response headers; the host sets `content-length`.
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Vec<u8>,
}

impl Reply {
    /// A reply with this status, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: Vec::new() }
    }

    /// Add a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of a header in this reply, compared case-insensitively.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Why the host refused an edit. Each variant names the offending input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    /// Not a valid HTTP field name.
    InvalidHeaderName(String),
    /// A field value containing CR, LF or NUL.
    InvalidHeaderValue(String),
    /// A path that does not start with `/`, or contains forbidden bytes.
    InvalidPath(String),
    /// A query containing forbidden bytes.
    InvalidQuery(String),
    /// Not a valid HTTP method token.
    InvalidMethod(String),
    /// A status outside 200..=599 (no final status).
    InvalidStatus(u16),
    /// No upstream group with this name is configured.
    UnknownUpstream(String),
    /// The edit would exceed a host limit.
    LimitExceeded(String),
}

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidHeaderName(n) => write!(f, "invalid header name {n:?}"),
            Self::InvalidHeaderValue(n) => write!(f, "invalid value for header {n:?}"),
            Self::InvalidPath(p) => write!(f, "invalid path {p:?}"),
            Self::InvalidQuery(q) => write!(f, "invalid query {q:?}"),
            Self::InvalidMethod(m) => write!(f, "invalid method {m:?}"),
            Self::InvalidStatus(s) => write!(f, "invalid status {s}"),
            Self::UnknownUpstream(u) => write!(f, "unknown upstream group {u:?}"),
            Self::LimitExceeded(what) => write!(f, "limit exceeded: {what}"),
        }
    }
}

impl std::error::Error for EditError {}
