//! Outbound HTTP: requests a filter sends itself, during `on-request`, to
//! the upstream groups its chain entry was granted (`outbound = [...]`).
//!
//! They go through Pingora's connector to a server of the group's first
//! tier, with the group's TLS settings and timeouts, so an operator
//! configures an auth service once, as an upstream. A failed connection
//! marks the server down as the proxy's own requests do, and is tried once
//! more on another server. The host bounds one call's fetches together by
//! the group's connect and read timeouts, and each body by
//! [`MAX_BODY_BYTES`].

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, header};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::ErrorType;
use pingora::protocols::http::client::HttpSession;

use crate::filters::host::host_owned;
use crate::service::headers::{CDN_LOOP, with_member};
use crate::upstream::UpstreamGroup;

/// The most fetches one call may make: a filter is policy, not a crawler.
pub const MAX_FETCHES_PER_CALL: u32 = 8;
/// The largest body sent or taken back.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// How long an idle connection to a group's server is kept for the next fetch.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One connection pool for every fetch of the process, as Pingora keeps one
/// for its proxied requests.
static CONNECTOR: LazyLock<Connector> = LazyLock::new(|| Connector::new(None));

/// Fetches by module, upstream group and outcome, for
/// `cascade_filter_fetches_total`. Only fetches to a granted group count,
/// so a filter cannot grow the series with names of its own.
#[derive(Debug, Default)]
pub struct FetchCounts(Mutex<BTreeMap<(String, String, &'static str), u64>>);

impl FetchCounts {
    pub fn record(&self, module: &str, group: &str, outcome: &'static str) {
        let mut counts = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry((module.to_string(), group.to_string(), outcome)).or_default() += 1;
    }

    /// Each series: module, group, outcome and count.
    pub fn for_each(&self, mut f: impl FnMut(&str, &str, &str, u64)) {
        let counts = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((module, group, outcome), n) in counts.iter() {
            f(module, group, outcome, *n);
        }
    }
}

/// A request a filter asked for.
#[derive(Debug, Clone)]
pub struct Fetch {
    pub method: String,
    pub path_with_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The answer, whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a fetch got no answer. (Whether the filter may fetch at all is the
/// host's check, before any of these.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("no answer within the group's timeouts")]
    Timeout,
    #[error("bad response: {0}")]
    BadResponse(String),
    /// The answer's body is past [`MAX_BODY_BYTES`].
    #[error("limit exceeded: {0}")]
    TooLarge(String),
}

impl FetchError {
    /// The outcome label of a fetch that failed so.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) | Self::LimitExceeded(_) => "refused",
            Self::Unreachable(_) => "unreachable",
            Self::Timeout => "timeout",
            Self::BadResponse(_) => "bad-response",
            Self::TooLarge(_) => "too-large",
        }
    }
}

/// The longest a fetch to `group` may take: one connection and one answer.
pub fn time_allowed(group: &UpstreamGroup) -> Duration {
    group.config.connect_timeout + group.config.read_timeout
}

/// The fields a fetch may carry once: the filter's, or else the host's.
const SINGLE: [HeaderName; 2] = [header::HOST, HeaderName::from_static(crate::service::REQUEST_ID_HEADER)];

/// What a fetch carries of the request it is made for.
pub struct Origin<'a> {
    /// `Host`, unless the filter gives one: the group's TLS name or name.
    pub host: &'a str,
    pub request_id: &'a str,
    /// The filtered request's fields, for the `CDN-Loop` it came with.
    pub cdn_loop_seen: &'a http::HeaderMap,
    /// This node's `CDN-Loop` member.
    pub cdn_loop_member: Option<&'a HeaderValue>,
}

/// The head `fetch` is sent with, checked: a method token, an origin-form
/// target, and fields the host does not own, `Host` and `X-Request-Id` at
/// most once. `Host` names the group unless the filter gave one,
/// `X-Request-Id` the filtered request, and `CDN-Loop` is the filtered
/// request's with this node added.
pub fn request_header(fetch: &Fetch, from: &Origin) -> Result<RequestHeader, FetchError> {
    let invalid = |what: String| FetchError::InvalidRequest(what);
    let method =
        Method::from_bytes(fetch.method.as_bytes()).map_err(|_| invalid(format!("method {:?}", fetch.method)))?;
    let target = &fetch.path_with_query;
    let uri: http::Uri = target.parse().map_err(|_| invalid(format!("path {target:?}")))?;
    if !target.starts_with('/') || uri.authority().is_some() {
        return Err(invalid(format!("path {target:?}: it must start with '/'")));
    }
    if fetch.body.len() > MAX_BODY_BYTES {
        return Err(FetchError::LimitExceeded(format!("request body over {MAX_BODY_BYTES} bytes")));
    }
    let mut head = RequestHeader::build(method, target.as_bytes(), Some(fetch.headers.len() + 3))
        .map_err(|e| invalid(format!("path {target:?}: {e}")))?;
    for (name, value) in &fetch.headers {
        if host_owned(name) || name.eq_ignore_ascii_case(CDN_LOOP.as_str()) {
            return Err(invalid(format!("header {name:?} is the host's to write")));
        }
        let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid(format!("header name {name:?}")))?;
        if SINGLE.contains(&parsed) && head.headers.contains_key(&parsed) {
            return Err(invalid(format!("header {name:?} given twice")));
        }
        let value = HeaderValue::from_str(value).map_err(|_| invalid(format!("value of header {name:?}")))?;
        head.append_header(parsed, value).map_err(|e| invalid(format!("header {name:?}: {e}")))?;
    }
    let [host_name, id_name] = SINGLE;
    for (name, value) in [(host_name, from.host), (id_name, from.request_id)] {
        if !head.headers.contains_key(&name) {
            let value = HeaderValue::from_str(value).map_err(|_| invalid(format!("value of header {name}")))?;
            head.insert_header(name, value).map_err(|e| invalid(e.to_string()))?;
        }
    }
    // A fetch is a request this node makes: one that comes back to it
    // through a loop of groups is refused (508) like any other.
    if let Some(member) = from.cdn_loop_member {
        let cdn_loop = with_member(from.cdn_loop_seen, &CDN_LOOP, member.clone());
        head.insert_header(CDN_LOOP, cdn_loop).map_err(|e| invalid(e.to_string()))?;
    }
    if !fetch.body.is_empty() || matches!(head.method, Method::POST | Method::PUT | Method::PATCH) {
        head.insert_header(header::CONTENT_LENGTH, fetch.body.len()).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(head)
}

/// Where a fetch goes and how long it may take.
pub struct Destination<'a> {
    pub group: &'a UpstreamGroup,
    /// Picks the server in a consistent-hash group: the filtered request's
    /// id, so that fetches spread over the servers.
    pub key_hash: u64,
    /// The most the whole exchange may take.
    pub allowed: Duration,
}

/// Send `head` and `body` to a server of the group, and read the answer.
/// A failed connection is tried once more on another server in rotation,
/// and a pooled connection the server had closed once more on a new one.
pub async fn send(to: Destination<'_>, head: RequestHeader, body: Bytes) -> Result<Fetched, FetchError> {
    let group = to.group;
    let attempts = async {
        let mut failed = Vec::new();
        let mut retried_stale = false;
        loop {
            let addr = group.pick(to.key_hash, &failed).unwrap_or_else(|| group.any_server());
            let peer = group.peer(addr);
            let (mut session, reused) = match CONNECTOR.get_http_session(&*peer).await {
                Ok(connected) => connected,
                Err(e) => {
                    group.mark_unreachable(addr);
                    failed.push(addr);
                    if failed.len() < 2 && group.has_server_besides(&failed) {
                        continue;
                    }
                    return Err(FetchError::Unreachable(format!("{} server {addr}: {e}", group.name())));
                }
            };
            // Pingora's connector leaves these to the caller, as its proxy sets them.
            session.set_read_timeout(Some(group.config.read_timeout));
            session.set_write_timeout(Some(group.config.read_timeout));
            match exchange(&mut session, head.clone(), body.clone()).await {
                Ok(fetched) => {
                    // Off the answer's path: a connection not kept is shut down.
                    tokio::spawn(async move {
                        CONNECTOR.release_http_session(session, &*peer, Some(IDLE_TIMEOUT)).await;
                    });
                    return Ok(fetched);
                }
                Err(Failure::Pingora(e)) if !retried_stale && retryable(&e, reused) => retried_stale = true,
                Err(Failure::Pingora(e)) => return Err(classify(&e)),
                Err(Failure::Fetch(e)) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(to.allowed, attempts).await {
        Ok(fetched) => fetched,
        Err(_) => Err(FetchError::Timeout),
    }
}

enum Failure {
    Pingora(Box<pingora::Error>),
    Fetch(FetchError),
}

impl From<Box<pingora::Error>> for Failure {
    fn from(e: Box<pingora::Error>) -> Self {
        Self::Pingora(e)
    }
}

/// One request and its answer on `session`.
async fn exchange(session: &mut HttpSession, head: RequestHeader, body: Bytes) -> Result<Fetched, Failure> {
    session.write_request_header(Box::new(head)).await?;
    if !body.is_empty() {
        session.write_request_body(body, true).await?;
    }
    session.finish_request_body().await?;
    // Interim answers (100 Continue, 103 Early Hints) come before the real one.
    let status = loop {
        session.read_response_header().await?;
        let status = session.response_header().map_or(0, |h| h.status.as_u16());
        if !(100..200).contains(&status) || status == 101 {
            break status;
        }
    };
    if status == 101 {
        return Err(Failure::Fetch(FetchError::BadResponse("101 Switching Protocols".into())));
    }
    let headers = session.response_header().map(|h| header_list(&h.headers)).unwrap_or_default();
    let mut body = Vec::new();
    while let Some(chunk) = session.read_response_body().await? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(Failure::Fetch(FetchError::TooLarge(format!("response body over {MAX_BODY_BYTES} bytes"))));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched { status, headers, body })
}

/// Every field, name and value, as text.
fn header_list(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers.iter().map(|(name, value)| (name.as_str().to_string(), crate::filters::host::value_text(value))).collect()
}

/// Whether Pingora says the exchange may be tried again: an error it
/// leaves to the connection's reuse means a pooled connection the server
/// had closed.
fn retryable(e: &pingora::Error, reused: bool) -> bool {
    let mut retry = e.retry;
    retry.decide_reuse(reused);
    retry.retry()
}

/// What a Pingora error says of the exchange.
fn classify(e: &pingora::Error) -> FetchError {
    match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => FetchError::Timeout,
        ErrorType::ConnectTimedout
        | ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError => FetchError::Unreachable(e.to_string()),
        _ => FetchError::BadResponse(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(method: &str, target: &str, headers: &[(&str, &str)]) -> Fetch {
        Fetch {
            method: method.into(),
            path_with_query: target.into(),
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            body: Vec::new(),
        }
    }

    /// Build the head of `fetch` for request `id1` from group `auth`, at
    /// node `edge`, for a request that came with `CDN-Loop: regional`.
    fn head_of(fetch: &Fetch) -> Result<RequestHeader, FetchError> {
        let mut seen = http::HeaderMap::new();
        seen.insert(CDN_LOOP, HeaderValue::from_static("regional"));
        let member = HeaderValue::from_static("edge");
        request_header(
            fetch,
            &Origin { host: "auth", request_id: "id1", cdn_loop_seen: &seen, cdn_loop_member: Some(&member) },
        )
    }

    #[test]
    fn a_request_gets_the_groups_host_the_request_id_and_the_cdn_loop_with_this_node() {
        let head = head_of(&fetch("GET", "/check?x=1", &[("authorization", "Bearer t")])).unwrap();
        assert_eq!(head.uri, "/check?x=1");
        assert_eq!(head.headers["host"], "auth");
        assert_eq!(head.headers["x-request-id"], "id1");
        assert_eq!(head.headers["cdn-loop"], "regional, edge");
        assert_eq!(head.headers["authorization"], "Bearer t");
        assert!(head.headers.get("content-length").is_none(), "a GET without a body has no length");

        let own = fetch("POST", "/", &[("Host", "auth.internal"), ("X-Request-Id", "mine")]);
        let head = head_of(&own).unwrap();
        assert_eq!(head.headers["host"], "auth.internal");
        assert_eq!(head.headers.get_all("x-request-id").iter().collect::<Vec<_>>(), ["mine"]);
        assert_eq!(head.headers["content-length"], "0", "a POST says its body is empty");
    }

    #[test]
    fn what_the_host_will_not_send_is_refused_with_what_it_was() {
        let refused = |f: Fetch| match head_of(&f) {
            Err(FetchError::InvalidRequest(what)) => what,
            other => panic!("{other:?}"),
        };
        assert!(refused(fetch("GE T", "/", &[])).contains("method"));
        assert!(refused(fetch("GET", "check", &[])).contains("must start with '/'"));
        assert!(refused(fetch("GET", "http://elsewhere/", &[])).contains("must start with '/'"));
        assert!(refused(fetch("GET", "/a b", &[])).contains("path"));
        assert!(refused(fetch("GET", "/", &[("content-length", "5")])).contains("host's to write"));
        assert!(refused(fetch("GET", "/", &[("Connection", "close")])).contains("host's to write"));
        assert!(refused(fetch("GET", "/", &[("CDN-Loop", "elsewhere")])).contains("host's to write"));
        assert!(refused(fetch("GET", "/", &[("host", "a"), ("Host", "b")])).contains("given twice"));
        assert!(refused(fetch("GET", "/", &[("x-request-id", "a"), ("x-request-id", "b")])).contains("given twice"));
        assert!(refused(fetch("GET", "/", &[("bad name", "v")])).contains("header name"));
        assert!(refused(fetch("GET", "/", &[("x-a", "line\r\nbreak")])).contains("value of header"));

        let mut big = fetch("POST", "/", &[]);
        big.body = vec![0; MAX_BODY_BYTES + 1];
        assert!(matches!(head_of(&big), Err(FetchError::LimitExceeded(_))));
    }
}
