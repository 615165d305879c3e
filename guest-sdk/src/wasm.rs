//! The real host: thin wrappers over the `cascade:filter` imports, and the glue
//! that the export macro calls.

use std::any::Any;
use std::cell::{Cell, RefCell};

use crate::{EditError, Filter, Reply, Verdict};

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "filter",
        pub_export_macro: true,
        default_bindings_module: "cascade_filter::__private::bindings",
    });
}

use bindings::cascade::filter::{
    config, jwt as host_jwt, kv as host_kv, log as host_log, outbound as host_outbound, rate_limit as host_rate_limit,
    regex as host_regex, types,
};

/// The request being filtered. Every method is one host call.
pub struct Request<'a>(&'a types::Request);

/// The response head being filtered. Every method is one host call.
pub struct Response<'a>(&'a types::Response);

fn edit_error(e: types::EditError) -> EditError {
    use types::EditError as E;
    match e {
        E::InvalidHeaderName(s) => EditError::InvalidHeaderName(s),
        E::InvalidHeaderValue(s) => EditError::InvalidHeaderValue(s),
        E::InvalidPath(s) => EditError::InvalidPath(s),
        E::InvalidQuery(s) => EditError::InvalidQuery(s),
        E::InvalidMethod(s) => EditError::InvalidMethod(s),
        E::InvalidStatus(s) => EditError::InvalidStatus(s),
        E::UnknownUpstream(s) => EditError::UnknownUpstream(s),
        E::LimitExceeded(s) => EditError::LimitExceeded(s),
    }
}

/// The header accessors, the same on the request and the response resource.
macro_rules! header_methods {
    () => {
        /// The first value of a header.
        pub fn header(&self, name: &str) -> Option<String> {
            acted();
            self.0.header(name)
        }
        /// Every value of a header.
        pub fn header_values(&self, name: &str) -> Vec<String> {
            acted();
            self.0.header_values(name)
        }
        /// The names of all headers, lower-case.
        pub fn header_names(&self) -> Vec<String> {
            acted();
            self.0.header_names()
        }
        /// Set a header, replacing existing values.
        pub fn set_header(&self, name: &str, value: &str) -> Result<(), EditError> {
            acted();
            self.0.set_header(name, value).map_err(edit_error)
        }
        /// Append a header value.
        pub fn add_header(&self, name: &str, value: &str) -> Result<(), EditError> {
            acted();
            self.0.add_header(name, value).map_err(edit_error)
        }
        /// Remove every value of a header.
        pub fn remove_header(&self, name: &str) {
            acted();
            self.0.remove_header(name)
        }
    };
}

impl Request<'_> {
    /// The host-assigned request id.
    pub fn id(&self) -> String {
        self.0.id()
    }
    /// The method, for example `GET`.
    pub fn method(&self) -> String {
        self.0.method()
    }
    /// Replace the method.
    pub fn set_method(&self, method: &str) -> Result<(), EditError> {
        self.0.set_method(method).map_err(edit_error)
    }
    /// The path without the query.
    pub fn path(&self) -> String {
        self.0.path()
    }
    /// Replace the path; it must start with `/`.
    pub fn set_path(&self, path: &str) -> Result<(), EditError> {
        self.0.set_path(path).map_err(edit_error)
    }
    /// The query string without `?`.
    pub fn query(&self) -> Option<String> {
        self.0.query()
    }
    /// Replace or remove the query string.
    pub fn set_query(&self, query: Option<&str>) -> Result<(), EditError> {
        self.0.set_query(query).map_err(edit_error)
    }
    header_methods!();
    /// The client's IP address.
    pub fn client_ip(&self) -> String {
        self.0.client_ip()
    }
    /// The name of the matched route.
    pub fn route_name(&self) -> String {
        self.0.route_name()
    }
    /// The upstream group the request will go to.
    pub fn upstream(&self) -> String {
        self.0.upstream()
    }
    /// Send the request to another configured upstream group.
    pub fn set_upstream(&self, group: &str) -> Result<(), EditError> {
        self.0.set_upstream(group).map_err(edit_error)
    }
    /// Set a header on the response to this request, whatever gives it
    /// (the upstream, the cache, a filter's reply or the proxy's error).
    /// The edit is staged, and made in the response phase at this filter's
    /// place, just before its `on_response` would run. A filter whose
    /// response work is only header edits stages them here and needs no
    /// `on_response`; its instance is then free while the request goes
    /// upstream.
    pub fn set_response_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        self.0.set_response_header(name, value).map_err(edit_error)
    }
    /// Stage an appended value for a header of the response; see
    /// [`Request::set_response_header`].
    pub fn add_response_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        self.0.add_response_header(name, value).map_err(edit_error)
    }
    /// Stage the removal of a header from the response, the upstream's own
    /// included; see [`Request::set_response_header`].
    pub fn remove_response_header(&self, name: &str) -> Result<(), EditError> {
        self.0.remove_response_header(name).map_err(edit_error)
    }
}

impl Response<'_> {
    /// The status code.
    pub fn status(&self) -> u16 {
        acted();
        self.0.status()
    }
    /// Replace the status code.
    pub fn set_status(&self, status: u16) -> Result<(), EditError> {
        acted();
        self.0.set_status(status).map_err(edit_error)
    }
    header_methods!();
}

/// Write to the host log, tagged with this module, route and request id.
pub mod log {
    use super::host_log::{Level, log};
    /// Log at debug level.
    pub fn debug(message: &str) {
        super::acted();
        log(Level::Debug, message)
    }
    /// Log at info level.
    pub fn info(message: &str) {
        super::acted();
        log(Level::Info, message)
    }
    /// Log at warn level.
    pub fn warn(message: &str) {
        super::acted();
        log(Level::Warn, message)
    }
    /// Log at error level.
    pub fn error(message: &str) {
        super::acted();
        log(Level::Error, message)
    }
}

/// The proxy's upstream groups.
pub mod upstreams {
    /// The upstream groups of the proxy's config: those
    /// [`Request::set_upstream`](crate::Request::set_upstream) accepts.
    /// Check the groups a config names in [`Filter::check`](crate::Filter::check).
    pub fn groups() -> Vec<String> {
        super::config::upstream_groups()
    }
}

/// Keyed rate limits with state shared across all requests.
pub mod rate_limit {
    use super::host_rate_limit as host;
    use crate::{CheckError, Decision};
    use std::time::Duration;

    /// Take `cost` from the bucket of `key` under the configured `policy`.
    pub fn check(policy: &str, key: &str, cost: u32) -> Result<Decision, CheckError> {
        super::acted();
        match host::check(policy, key, cost) {
            Ok(d) => Ok(Decision {
                allowed: d.allowed,
                limit: d.limit,
                remaining: d.remaining,
                reset_after: Duration::from_millis(d.reset_after_ms),
                retry_after: Duration::from_millis(d.retry_after_ms),
                window: Duration::from_millis(d.window_ms),
            }),
            Err(host::CheckError::UnknownPolicy(p)) => Err(CheckError::UnknownPolicy(p)),
            Err(host::CheckError::InvalidCost(c)) => Err(CheckError::InvalidCost(c)),
        }
    }
}

/// JWT verification against keysets configured in the host.
pub mod jwt {
    use super::host_jwt as host;
    use crate::VerifyError;

    /// Verify `token` with `keyset`; on success, its claims as JSON text.
    pub fn verify(token: &str, keyset: &str) -> Result<String, VerifyError> {
        super::acted();
        host::verify(token, keyset).map_err(|e| match e {
            host::VerifyError::UnknownKeyset(k) => VerifyError::UnknownKeyset(k),
            host::VerifyError::Malformed(m) => VerifyError::Malformed(m),
            host::VerifyError::AlgorithmNotAllowed(a) => VerifyError::AlgorithmNotAllowed(a),
            host::VerifyError::UnknownKey => VerifyError::UnknownKey,
            host::VerifyError::BadSignature => VerifyError::BadSignature,
            host::VerifyError::Expired => VerifyError::Expired,
            host::VerifyError::NotYetValid => VerifyError::NotYetValid,
            host::VerifyError::WrongIssuer => VerifyError::WrongIssuer,
            host::VerifyError::WrongAudience => VerifyError::WrongAudience,
        })
    }
}

/// Key-value stores in the host, shared by every request (and written by
/// the admin API too). A TTL makes a key expire; without one it stays.
pub mod kv {
    use super::host_kv as host;
    use crate::KvError;
    use std::time::Duration;

    fn kv_error(e: host::KvError) -> KvError {
        match e {
            host::KvError::UnknownStore(s) => KvError::UnknownStore(s),
            host::KvError::ReadOnly(s) => KvError::ReadOnly(s),
            host::KvError::InvalidKey(k) => KvError::InvalidKey(k),
            host::KvError::ValueTooLarge(n) => KvError::ValueTooLarge(n),
            host::KvError::StoreFull(s) => KvError::StoreFull(s),
            host::KvError::NotANumber(m) => KvError::NotANumber(m),
        }
    }

    fn millis(ttl: Option<Duration>) -> Option<u64> {
        ttl.map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
    }

    /// The value of `key` in `store`, if set and not expired.
    pub fn get(store: &str, key: &str) -> Result<Option<String>, KvError> {
        super::acted();
        host::get(store, key).map_err(kv_error)
    }

    /// Set `key` to `value`, expiring after `ttl` if given.
    pub fn set(store: &str, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), KvError> {
        super::acted();
        host::set(store, key, value, millis(ttl)).map_err(kv_error)
    }

    /// Remove `key`; whether it was set.
    pub fn delete(store: &str, key: &str) -> Result<bool, KvError> {
        super::acted();
        host::delete(store, key).map_err(kv_error)
    }

    /// Add `delta` to the number at `key`, atomically; the sum. A new key
    /// starts at 0 and expires after `ttl`; an existing one keeps its expiry.
    pub fn increment(store: &str, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        super::acted();
        host::increment(store, key, delta, millis(ttl)).map_err(kv_error)
    }
}

/// HTTP requests to the upstream groups this chain entry was granted
/// (`outbound = [...]` in the route file), during `on_request`.
pub mod outbound {
    use super::host_outbound as host;
    use crate::{FetchError, OutboundRequest, OutboundResponse};

    /// Send `request` to a server of `upstream` and wait for its whole
    /// answer. Any status is an answer; the wait does not count toward the
    /// filter's deadline.
    pub fn fetch(upstream: &str, request: OutboundRequest) -> Result<OutboundResponse, FetchError> {
        super::acted();
        let request = host::OutboundRequest {
            method: request.method,
            path_with_query: request.path_with_query,
            headers: request.headers,
            body: request.body,
        };
        match host::fetch(upstream, &request) {
            Ok(r) => Ok(OutboundResponse { status: r.status, headers: r.headers, body: r.body }),
            Err(e) => Err(match e {
                host::FetchError::NotGranted(m) => FetchError::NotGranted(m),
                host::FetchError::Unavailable(m) => FetchError::Unavailable(m),
                host::FetchError::InvalidRequest(m) => FetchError::InvalidRequest(m),
                host::FetchError::LimitExceeded(m) => FetchError::LimitExceeded(m),
                host::FetchError::Unreachable(m) => FetchError::Unreachable(m),
                host::FetchError::Timeout => FetchError::Timeout,
                host::FetchError::BadResponse(m) => FetchError::BadResponse(m),
            }),
        }
    }
}

/// Regular expressions compiled and cached by the host.
pub mod regex {
    use super::host_regex as host;

    /// Whether `pattern` matches anywhere in `text`.
    pub fn is_match(pattern: &str, text: &str) -> Result<bool, String> {
        super::acted();
        host::is_match(pattern, text)
    }

    /// Replace the first match, expanding `$1` and `${name}`; `None` when
    /// nothing matches.
    pub fn replace(pattern: &str, text: &str, replacement: &str) -> Result<Option<String>, String> {
        super::acted();
        host::replace(pattern, text, replacement)
    }

    /// Each capture group's name (`None` for an unnamed one), group 0 first.
    pub fn capture_names(pattern: &str) -> Result<Vec<Option<String>>, String> {
        super::acted();
        host::capture_names(pattern)
    }
}

thread_local! {
    // The filter as `Filter::new` built it from this instance's config, before
    // any request saw it. An instance's config never changes (a reused
    // instance stays with its chain entry), so it is parsed and checked once
    // per instance, and every request starts from a clone of this value.
    static BUILT: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    // The filter value for the request this instance serves, from on-request
    // to on-response. A reused instance gets a new one on its next request.
    static CURRENT: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    // Whether the SDK's default `Filter::on_response` ran in this call, and
    // whether the call did anything the host can see (a response edit or
    // read, a log line, a capability). Only a call with the first and not
    // the second tells the host to skip `on-response`: a filter that wraps
    // another and edits responses itself keeps its calls.
    static DEFAULT_ON_RESPONSE_RAN: Cell<bool> = const { Cell::new(false) };
    static ACTED: Cell<bool> = const { Cell::new(false) };
    // Set once this filter told the host to skip `on-response`: a request's
    // clone is then dropped with its `on-request`, not kept for a call that
    // never comes.
    static SKIPS_ON_RESPONSE: Cell<bool> = const { Cell::new(false) };
}

/// Note a call the host can see (see `ACTED`).
fn acted() {
    ACTED.with(|acted| acted.set(true));
}

/// Run `with` on the filter built from this instance's config, building it
/// (parse, then `Filter::new`) on first use. A failed build is not kept.
fn with_built<F: Filter, R>(with: impl FnOnce(&F) -> R) -> Result<R, String> {
    BUILT.with(|built| {
        let mut built = built.borrow_mut();
        if let Some(filter) = built.as_ref().and_then(|f| f.downcast_ref::<F>()) {
            return Ok(with(filter));
        }
        log_panics();
        let filter = crate::instantiate::<F>(&config::get())?;
        let result = with(&filter);
        *built = Some(Box::new(filter));
        Ok(result)
    })
}

/// Send a panic's message and place to the host log, once per instance,
/// before any filter code runs. std's own hook writes them to stderr, which
/// goes nowhere (`wasi_stdio`), and the host sees only the trap that
/// follows ("wasm `unreachable` instruction executed"). The line is the
/// host's, tagged with module, route and request id like any filter log.
fn log_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // "panicked at src/lib.rs:7:9:\n<message>", on one line.
        std::panic::set_hook(Box::new(|info| {
            host_log::log(host_log::Level::Error, &info.to_string().replace('\n', " "));
        }));
    });
}

/// A filter for one request: its own clone of the built one.
fn for_request<F: Filter>() -> Result<F, String> {
    with_built::<F, F>(F::clone)
}

pub fn check_config<F: Filter>() -> Result<(), String> {
    with_built::<F, _>(F::check)?
}

pub fn on_request<F: Filter>(request: &types::Request) -> types::Verdict {
    // A config that fails here was accepted by check-config at load time, so
    // this is a bug in the filter: trap and let the route's on_error decide.
    let mut filter = for_request::<F>().unwrap_or_else(|e| panic!("{e}"));
    let verdict = filter.on_request(&Request(request));
    if !SKIPS_ON_RESPONSE.with(Cell::get) {
        CURRENT.with(|current| *current.borrow_mut() = Some(Box::new(filter)));
    }
    match verdict {
        Verdict::Continue => types::Verdict::Continue,
        Verdict::Respond(Reply { status, headers, body }) => {
            types::Verdict::Respond(types::Reply { status, headers, body })
        }
    }
}

/// The SDK's default `Filter::on_response` ran (see `ACTED`).
pub(crate) fn default_on_response_ran() {
    DEFAULT_ON_RESPONSE_RAN.with(|ran| ran.set(true));
}

pub fn on_response<F: Filter>(response: &types::Response) {
    let current = CURRENT.with(|current| current.borrow_mut().take());
    let mut filter = match current.and_then(|f| f.downcast::<F>().ok()) {
        Some(filter) => *filter,
        None => for_request::<F>().unwrap_or_else(|e| panic!("{e}")),
    };
    DEFAULT_ON_RESPONSE_RAN.with(|ran| ran.set(false));
    ACTED.with(|acted| acted.set(false));
    filter.on_response(&Response(response));
    if DEFAULT_ON_RESPONSE_RAN.with(Cell::get) && !ACTED.with(Cell::get) {
        SKIPS_ON_RESPONSE.with(|skips| skips.set(true));
        config::skip_on_response();
    }
}
