//! The host side of one filter instance: its `Store` data and the
//! implementations of the `cascade:filter` imports.
//!
//! A store serves one request at a time (one in all, unless its chain entry
//! reuses instances). The request (or response) head is moved into the store
//! for the duration of one call and moved back out after it, so the guest
//! edits the real message and nothing is copied up front.

use crate::config::{FilterEntry, OnError, OutputLimits};
use crate::service::headers::header_count;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::cascade::filter::{config, jwt, kv, log, outbound, rate_limit, regex, types};
use super::capabilities::Capabilities;
use super::capabilities::jwt::VerifyError;
use super::capabilities::kv::{KvError, KvStore};
use super::capabilities::outbound::{self as fetching, Fetch, FetchError, MAX_FETCHES_PER_CALL};
use super::capabilities::rate_limit::CheckError;
use super::chain::FINAL_STATUSES;
use super::runtime::InstanceCount;
use crate::upstream::Upstreams;

use types::EditError;

/// Host representation of the `request` resource. A store only ever holds one
/// request, so the handle carries no data; it names [`FilterHost::request`].
pub struct RequestHandle;

/// Host representation of the `response` resource; see [`RequestHandle`].
pub struct ResponseHandle;

/// Everything the request resource reads and writes.
pub struct RequestHead {
    pub header: RequestHeader,
    pub id: Arc<str>,
    pub client_ip: Arc<str>,
    pub route_name: Arc<str>,
    /// The upstream group the request goes to; filters may change it.
    pub upstream: String,
    /// The groups a filter may choose from.
    pub upstreams: Arc<Upstreams>,
    /// A background cache refresh that Pingora replays, not a client's
    /// request: the client's own request already took its rate-limit tokens.
    pub replay: bool,
    /// Response header edits (`set-response-header` and kin) staged by the
    /// filter now running; the chain takes them after each call
    /// (`FilterChain::run_request`), so each entry stages within its own limits.
    pub response_edits: StagedEdits,
}

/// The response header edits one `on-request` call staged, and their size.
#[derive(Default)]
pub struct StagedEdits {
    pub edits: Vec<ResponseEdit>,
    bytes: usize,
}

/// The bytes of names and values one call may stage, unless one value may
/// be longer: the edits are held while the request waits upstream, after
/// the instance (and its memory cap) has moved on.
const MAX_STAGED_BYTES: usize = 64 << 10;

/// A response header edit staged during `on-request`, checked when staged.
pub enum ResponseEdit {
    Set(String, HeaderValue),
    Add(String, HeaderValue),
    Remove(HeaderName),
}

/// Make one filter's staged edits on `response`, in order. Names and values
/// were checked when staged; the header count is checked now, as a filter's
/// own edit in `on-response` would be, and an edit past it is dropped. The
/// drops make one log line, however many: a filter must not be able to
/// write hundreds of the host's lines per request.
pub fn apply_response_edits(
    edits: Vec<ResponseEdit>,
    response: &mut ResponseHeader,
    limits: &OutputLimits,
    module: &str,
    request_id: &str,
) {
    let (mut dropped, mut first_reason) = (0usize, None);
    for edit in edits {
        let (name, value, append) = match edit {
            ResponseEdit::Remove(name) => {
                response.remove_header(&name);
                continue;
            }
            ResponseEdit::Set(name, value) => (name, value, false),
            ResponseEdit::Add(name, value) => (name, value, true),
        };
        let result = if over_header_count(limits, &response.headers, &name, append) {
            Err(format!("{name:?} would take the response past {} headers", limits.header_count))
        } else if append {
            response.append_header(name, value).map(drop).map_err(|e| e.to_string())
        } else {
            response.insert_header(name, value).map_err(|e| e.to_string())
        };
        if let Err(why) = result {
            dropped += 1;
            first_reason.get_or_insert(why);
        }
    }
    if let Some(first_reason) = first_reason {
        ::log::warn!(
            "request {request_id}: filter {module:?}: {dropped} staged response header(s) dropped, the first: \
             {first_reason}"
        );
    }
}

/// Which module, route and request a log line or failure belongs to.
#[derive(Debug, Clone)]
pub struct InstanceTag {
    pub module: Arc<str>,
    pub route: Arc<str>,
    pub request_id: Arc<str>,
}

/// Caps one instance's memory and table growth and its instance count.
pub struct InstanceLimiter {
    /// The cap on all of the instance's memories together: a component may
    /// hold several (up to `MAX_MEMORIES`), and a cap on each alone would
    /// let it use that many times the cap.
    memory_bytes: usize,
    /// Set when the memory cap refused a growth, so the failure can say so.
    pub memory_cap_hit: bool,
    /// The size of all of the instance's memories together (the limiter
    /// also sees each memory's initial size, as a growth from zero).
    pub memory_in_use: usize,
}

/// What one filter instance may write to the proxy's log for one request:
/// enough for any diagnosis, too little for a filter in a loop to flood the
/// log (and stall its worker on the writes) within its CPU deadline. Error
/// lines have an allowance of their own, so that a flood of lesser lines
/// cannot swallow the one that says why the filter failed (the SDK logs a
/// panic's message as an error).
pub const MAX_LOG_LINES_PER_REQUEST: u32 = 100;
pub const MAX_LOG_ERRORS_PER_REQUEST: u32 = 10;
/// The longest log line a filter may write; the rest is cut, and counted.
pub const MAX_LOG_LINE_BYTES: usize = 4096;
/// The log target of filters' lines. It is no prefix of a module path, so
/// `RUST_LOG=cascade::filter_log=debug` (or `=off`) touches these alone:
/// the logger matches targets by prefix.
pub const FILTER_LOG_TARGET: &str = "cascade::filter_log";

/// What one instance logged for its current request: the lines, by
/// allowance, and the last error line as written (what a failed config
/// check adds to its error, since an SDK filter logs its panic's message
/// there).
#[derive(Debug, Default)]
struct LoggedLines {
    lines: u32,
    errors: u32,
    last_error: Option<String>,
}

/// The longest header name a filter may set. Value sizes, header counts and
/// reply bodies are limited per chain entry (`config::OutputLimits`).
pub const MAX_HEADER_NAME_BYTES: usize = 256;

const MAX_TABLE_ELEMENTS: usize = 100_000;
const MAX_CORE_INSTANCES: usize = 32;
const MAX_TABLES: usize = 32;
const MAX_MEMORIES: usize = 4;

impl ResourceLimiter for InstanceLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> Result<bool> {
        // A growth past the memory's own declared maximum fails anyway: it is
        // refused here, before it is counted.
        if maximum.is_some_and(|maximum| desired > maximum) {
            return Ok(false);
        }
        let in_use = self.memory_in_use.saturating_sub(current).saturating_add(desired);
        if in_use > self.memory_bytes {
            self.memory_cap_hit = true;
            // Trapping (rather than failing the grow) stops the filter at once,
            // instead of letting its allocator abort with a less clear error.
            return Err(wasmtime::Error::msg(format!(
                "memory cap of {} bytes exceeded (wanted {in_use})",
                self.memory_bytes
            )));
        }
        self.memory_in_use = in_use;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// The message as it was before a call's first edit.
enum BeforeEdits {
    Request { header: RequestHeader, upstream: String },
    Response(ResponseHeader),
}

/// The data of one filter instance's `Store`.
pub struct FilterHost {
    pub tag: InstanceTag,
    config_json: Arc<str>,
    caps: Arc<Capabilities>,
    /// What this chain entry's filter may hand back.
    output: OutputLimits,
    pub limiter: InstanceLimiter,
    /// When the running call must stop (`chain::arm_deadline`).
    pub deadline: Arc<CallDeadline>,
    /// The upstream groups this chain entry may fetch from (`outbound`).
    pub outbound_grants: Arc<[String]>,
    /// Fetches made by the running call, and how long they waited.
    fetches: u32,
    fetch_wait: Duration,
    /// Present only during `on-request`.
    pub request: Option<RequestHead>,
    /// Present only during `on-response`.
    pub response: Option<ResponseHeader>,
    /// The filter said its `on-response` does nothing (`config.skip-on-response`).
    pub skips_on_response: bool,
    /// The running call is `check-config`: capabilities answer as they
    /// would, and change nothing (a rate-limit check takes no tokens).
    pub checking_config: bool,
    /// Keep the message as it was before the running call's first edit, so
    /// that a failed call can be undone (`undo_failed_call`): set for a
    /// fail-open entry, whose failure must skip the filter as if it never
    /// ran, not forward what it half did.
    undoes_failed_calls: bool,
    before_edits: Option<BeforeEdits>,
    /// What this instance logged for its current request.
    logged: LoggedLines,
    /// Built on first use: most filters never touch WASI, and then pay nothing.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    /// Counts this instance live while it serves a request (see
    /// `FilterRuntime::instance_opened`); `None` while it is parked for reuse.
    pub live: Option<InstanceCount>,
}

/// When the running call must stop. The store's epoch callback reads it
/// while guest code runs, and the call's timer (`chain::within`) while the
/// call waits on the host. A fetch moves it later by the time it waited:
/// the deadline bounds the filter's own run time, and the upstream group's
/// timeouts bound the fetch.
#[derive(Debug)]
pub struct CallDeadline(AtomicU64);

/// What a deadline's nanoseconds count from.
static DEADLINE_EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
/// No call is running.
const NO_DEADLINE: u64 = u64::MAX;

impl Default for CallDeadline {
    fn default() -> Self {
        Self(AtomicU64::new(NO_DEADLINE))
    }
}

impl CallDeadline {
    pub fn at(&self) -> Option<Instant> {
        match self.0.load(Ordering::Relaxed) {
            NO_DEADLINE => None,
            nanos => Some(*DEADLINE_EPOCH + Duration::from_nanos(nanos)),
        }
    }

    pub fn set(&self, at: Instant) {
        let nanos = at.saturating_duration_since(*DEADLINE_EPOCH).as_nanos();
        self.0.store(u64::try_from(nanos).unwrap_or(NO_DEADLINE - 1).min(NO_DEADLINE - 1), Ordering::Relaxed);
    }

    /// Time left now; `None` outside a call.
    pub fn left(&self) -> Option<Duration> {
        self.at().map(|at| at.saturating_duration_since(Instant::now()))
    }
}

impl FilterHost {
    /// The store data of an instance of chain entry `entry`.
    pub fn new(tag: InstanceTag, live: InstanceCount, caps: Arc<Capabilities>, entry: &FilterEntry) -> Self {
        let memory_bytes = entry.limits.memory_bytes as usize;
        Self {
            undoes_failed_calls: entry.on_error == OnError::FailOpen,
            checking_config: false,
            before_edits: None,
            live: Some(live),
            tag,
            config_json: entry.config_json.clone(),
            caps,
            output: entry.limits.output,
            limiter: InstanceLimiter { memory_bytes, memory_cap_hit: false, memory_in_use: 0 },
            deadline: Arc::default(),
            outbound_grants: entry.outbound.clone(),
            fetches: 0,
            fetch_wait: Duration::ZERO,
            request: None,
            response: None,
            skips_on_response: false,
            logged: LoggedLines::default(),
            wasi: None,
            table: resource_table(),
        }
    }

    /// Start a call that must end by `deadline`, with a fresh allowance of
    /// fetches; the deadline, for the call's timer.
    pub fn start_call(&mut self, deadline: Instant) -> Arc<CallDeadline> {
        self.deadline.set(deadline);
        self.fetches = 0;
        self.fetch_wait = Duration::ZERO;
        self.deadline.clone()
    }

    /// Tag a reused instance for the request it now serves, with that
    /// request's own log allowance.
    pub fn serve(&mut self, tag: InstanceTag) {
        self.tag = tag;
        self.logged = LoggedLines::default();
    }

    /// The last error line the filter logged for its current request.
    pub fn last_error(&self) -> Option<&str> {
        self.logged.last_error.as_deref()
    }

    fn request(&mut self) -> &mut RequestHead {
        self.request.as_mut().expect("the request resource is only lent during on-request")
    }

    /// The request, to edit: first kept as it was, if a failed call must be
    /// undone. Only a call that edits pays for the copy.
    fn request_to_edit(&mut self) -> &mut RequestHead {
        if self.undoes_failed_calls && self.before_edits.is_none() {
            let request = self.request();
            let before = BeforeEdits::Request { header: request.header.clone(), upstream: request.upstream.clone() };
            self.before_edits = Some(before);
        }
        self.request()
    }

    /// The response, to edit; see [`Self::request_to_edit`].
    fn response_to_edit(&mut self) -> &mut ResponseHeader {
        if self.undoes_failed_calls && self.before_edits.is_none() {
            self.before_edits = Some(BeforeEdits::Response(self.response().clone()));
        }
        self.response()
    }

    /// End the running call, while the store still holds its message: if
    /// it `failed`, the message is put back as it was before the call's
    /// first edit (kept only for an entry that undoes failed calls).
    pub fn end_call(&mut self, failed: bool) {
        match (self.before_edits.take(), failed) {
            (Some(BeforeEdits::Request { header, upstream }), true) => {
                let request = self.request();
                (request.header, request.upstream) = (header, upstream);
            }
            (Some(BeforeEdits::Response(before)), true) => *self.response() = before,
            _ => {}
        }
    }

    /// Keep a response header edit for the response. The entry's header
    /// count bounds the edits one call may stage, and `MAX_STAGED_BYTES`
    /// (or one value's limit, if larger) their size.
    fn stage_response_edit(&mut self, edit: ResponseEdit, bytes: usize) -> Result<(), EditError> {
        let max_edits = self.output.header_count;
        let max_bytes = MAX_STAGED_BYTES.max(self.output.header_value_bytes);
        let staged = &mut self.request().response_edits;
        if staged.edits.len() >= max_edits {
            return Err(EditError::LimitExceeded(format!("more than {max_edits} staged response header edits")));
        }
        if staged.bytes + bytes > max_bytes {
            return Err(EditError::LimitExceeded(format!("more than {max_bytes} bytes of staged response headers")));
        }
        staged.bytes += bytes;
        staged.edits.push(edit);
        Ok(())
    }

    /// Check a response header and stage it as the edit `as_edit` makes.
    fn stage_field(
        &mut self,
        name: String,
        value: String,
        as_edit: fn(String, HeaderValue) -> ResponseEdit,
    ) -> Result<(), EditError> {
        let value = checked_field(&self.output, &name, value)?;
        let bytes = name.len() + value.len();
        self.stage_response_edit(as_edit(name, value), bytes)
    }

    fn response(&mut self) -> &mut ResponseHeader {
        self.response.as_mut().expect("the response resource is only lent during on-response")
    }
}

impl WasiView for FilterHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: self.wasi.get_or_insert_with(sandboxed_wasi), table: &mut self.table }
    }
}

/// The WASI a filter gets: no preopens and no environment, stdio that goes
/// nowhere, and no network. `wasi:sockets` is linked because language
/// runtimes (CPython, JavaScript engines, Go) import it whether a filter
/// uses it or not, but every socket is refused when it is created
/// (`access-denied`), and names are not looked up. Wasmtime 48's defaults
/// already say so (its builder's docs say otherwise); they are spelled out
/// here so that a change of default cannot open the network.
fn sandboxed_wasi() -> WasiCtx {
    WasiCtx::builder()
        .max_random_size(MAX_RANDOM_BYTES)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// Host-side handles (WASI streams, pollables, this host's own resources)
/// one instance may hold at once. Each is host memory the guest's cap does
/// not count, and a guest looping on `get-stdout` adds one per call:
/// Wasmtime's default of a million is tens of megabytes. A filter uses a
/// handful.
const MAX_RESOURCES: usize = 1024;

/// The most one WASI random call returns. The host fills the buffer in one
/// call the epoch cannot interrupt; WASI's default is 64 MiB.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

fn resource_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_RESOURCES);
    table
}

/// Whether `name` is an HTTP field name: an RFC 9110 token.
pub fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header edit checked against the entry's limits: the name and value, and
/// whether it would take the message past its header count. The value is
/// handed back ready to insert; it keeps the guest's bytes without a copy.
fn checked_header(
    limits: &OutputLimits,
    headers: &http::HeaderMap,
    name: &str,
    value: String,
    appending: bool,
) -> Result<HeaderValue, EditError> {
    let value = checked_field(limits, name, value)?;
    if over_header_count(limits, headers, name, appending) {
        return Err(EditError::LimitExceeded(format!("more than {} headers", limits.header_count)));
    }
    Ok(value)
}

/// Whether setting (or with `appending`, adding) `name` would take a message
/// with `headers` past the entry's header count, counted as admission
/// counts. Only a message at its count looks the name up.
fn over_header_count(limits: &OutputLimits, headers: &http::HeaderMap, name: &str, appending: bool) -> bool {
    headers.len() >= limits.header_count
        && header_count(headers) >= limits.header_count
        && (appending || !headers.contains_key(name))
}

/// The message's framing. Pingora frames each message from its own state,
/// so a filter's `Content-Length` or `Transfer-Encoding`, written or
/// removed, would make the client or the origin read the body, or the next
/// message, differently from the proxy.
pub(crate) const FRAMING: [&str; 2] = ["content-length", "transfer-encoding"];
/// The hop-by-hop fields (RFC 9110 §7.6.1): the host writes them for each
/// connection. A filter may remove them (`Upgrade`, to refuse WebSockets).
pub(crate) const HOP_BY_HOP: [&str; 6] = ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

fn is_one_of(names: &[&str], name: &str) -> bool {
    names.iter().any(|owned| owned.eq_ignore_ascii_case(name))
}

/// Whether `name` is a field only the host writes: framing or hop-by-hop.
pub fn host_owned(name: &str) -> bool {
    is_one_of(&FRAMING, name) || is_one_of(&HOP_BY_HOP, name)
}

/// Whether `name` is a field only the host removes: the framing.
fn framing(name: &str) -> bool {
    is_one_of(&FRAMING, name)
}

/// A header name a filter may write: a token the host does not own, and not
/// too long.
fn checked_name(name: &str) -> Result<(), EditError> {
    checked_removal(name)?;
    if host_owned(name) {
        return Err(EditError::InvalidHeaderName(name.to_string()));
    }
    Ok(())
}

/// A header name a filter may remove: a token, not the framing, and not too
/// long.
fn checked_removal(name: &str) -> Result<(), EditError> {
    if name.len() > MAX_HEADER_NAME_BYTES {
        return Err(EditError::LimitExceeded(format!("header name longer than {MAX_HEADER_NAME_BYTES} bytes")));
    }
    if !is_token(name) || framing(name) {
        return Err(EditError::InvalidHeaderName(name.to_string()));
    }
    Ok(())
}

/// A header name and value checked against the entry's size limits.
fn checked_field(limits: &OutputLimits, name: &str, value: String) -> Result<HeaderValue, EditError> {
    checked_name(name)?;
    if value.len() > limits.header_value_bytes {
        let max = limits.header_value_bytes;
        return Err(EditError::LimitExceeded(format!("value of {name:?} longer than {max} bytes")));
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        .map_err(|_| EditError::InvalidHeaderValue(name.to_string()))
}

/// Pingora takes the name as the filter wrote it (for a message that came
/// over HTTP/1 it keeps that case for the peer) and parses it once;
/// `checked_header` made sure it parses, and the header count keeps the map
/// far below its size limit, so this error is only a safeguard.
fn refused_edit(error: Box<pingora::Error>) -> EditError {
    EditError::LimitExceeded(format!("header map refused the edit: {error}"))
}

fn first_value(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(value_text)
}

fn all_values(headers: &http::HeaderMap, name: &str) -> Vec<String> {
    headers.get_all(name).iter().map(value_text).collect()
}

/// A header value as text; bytes that are not UTF-8 become U+FFFD. The
/// strict check first: it runs a word at a time over ASCII, the lossy one
/// a byte at a time, and a bearer token is a long header.
pub(crate) fn value_text(value: &HeaderValue) -> String {
    match std::str::from_utf8(value.as_bytes()) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
    }
}

fn names(headers: &http::HeaderMap) -> Vec<String> {
    headers.keys().map(|k| k.as_str().to_string()).collect()
}

/// Replace the path and query of `header`, keeping whichever part is `None`.
fn set_target(header: &mut RequestHeader, path: Option<&str>, query: Option<Option<&str>>) -> Result<(), EditError> {
    let old_path = header.uri.path().to_string();
    let old_query = header.uri.query().map(str::to_string);
    let path = path.unwrap_or(&old_path);
    let query = query.unwrap_or(old_query.as_deref());
    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let uri = crate::route::normalize::with_path_and_query(&header.uri, &target).ok_or_else(|| match query {
        Some(q) if path == old_path => EditError::InvalidQuery(q.to_string()),
        _ => EditError::InvalidPath(path.to_string()),
    })?;
    header.set_uri(uri);
    Ok(())
}

impl types::Host for FilterHost {}

impl types::HostRequest for FilterHost {
    fn id(&mut self, _: Resource<RequestHandle>) -> String {
        self.request().id.to_string()
    }

    fn method(&mut self, _: Resource<RequestHandle>) -> String {
        self.request().header.method.as_str().to_string()
    }

    fn set_method(&mut self, _: Resource<RequestHandle>, method: String) -> Result<(), EditError> {
        let parsed = Method::from_bytes(method.as_bytes()).map_err(|_| EditError::InvalidMethod(method))?;
        self.request_to_edit().header.set_method(parsed);
        Ok(())
    }

    fn path(&mut self, _: Resource<RequestHandle>) -> String {
        self.request().header.uri.path().to_string()
    }

    fn set_path(&mut self, _: Resource<RequestHandle>, path: String) -> Result<(), EditError> {
        if path.contains(['?', '#']) {
            return Err(EditError::InvalidPath(path));
        }
        // Normalized as the client's path was: a later filter's prefix
        // checks and the origin must read the same path (`/public/..` is `/`).
        let Ok(normal) = crate::route::normalize::path(&path) else {
            return Err(EditError::InvalidPath(path));
        };
        set_target(&mut self.request_to_edit().header, Some(&normal), None)
    }

    fn query(&mut self, _: Resource<RequestHandle>) -> Option<String> {
        self.request().header.uri.query().map(str::to_string)
    }

    fn set_query(&mut self, _: Resource<RequestHandle>, query: Option<String>) -> Result<(), EditError> {
        if let Some(q) = &query
            && q.contains('#')
        {
            return Err(EditError::InvalidQuery(q.clone()));
        }
        set_target(&mut self.request_to_edit().header, None, Some(query.as_deref()))
    }

    fn header(&mut self, _: Resource<RequestHandle>, name: String) -> Option<String> {
        first_value(&self.request().header.headers, &name)
    }

    fn header_values(&mut self, _: Resource<RequestHandle>, name: String) -> Vec<String> {
        all_values(&self.request().header.headers, &name)
    }

    fn header_names(&mut self, _: Resource<RequestHandle>) -> Vec<String> {
        names(&self.request().header.headers)
    }

    fn set_header(&mut self, _: Resource<RequestHandle>, name: String, value: String) -> Result<(), EditError> {
        let output = self.output;
        let value = checked_header(&output, &self.request().header.headers, &name, value, false)?;
        self.request_to_edit().header.insert_header(name, value).map_err(refused_edit)
    }

    fn add_header(&mut self, _: Resource<RequestHandle>, name: String, value: String) -> Result<(), EditError> {
        let output = self.output;
        let value = checked_header(&output, &self.request().header.headers, &name, value, true)?;
        self.request_to_edit().header.append_header(name, value).map(drop).map_err(refused_edit)
    }

    fn remove_header(&mut self, _: Resource<RequestHandle>, name: String) {
        if framing(&name) {
            return;
        }
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes())
            && self.request().header.headers.contains_key(&n)
        {
            self.request_to_edit().header.remove_header(&n);
        }
    }

    fn client_ip(&mut self, _: Resource<RequestHandle>) -> String {
        self.request().client_ip.to_string()
    }

    fn route_name(&mut self, _: Resource<RequestHandle>) -> String {
        self.request().route_name.to_string()
    }

    fn upstream(&mut self, _: Resource<RequestHandle>) -> String {
        self.request().upstream.clone()
    }

    fn set_upstream(&mut self, _: Resource<RequestHandle>, group: String) -> Result<(), EditError> {
        if self.request().upstreams.get(&group).is_none() {
            return Err(EditError::UnknownUpstream(group));
        }
        self.request_to_edit().upstream = group;
        Ok(())
    }

    fn set_response_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: String,
    ) -> Result<(), EditError> {
        self.stage_field(name, value, ResponseEdit::Set)
    }

    fn add_response_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: String,
    ) -> Result<(), EditError> {
        self.stage_field(name, value, ResponseEdit::Add)
    }

    fn remove_response_header(&mut self, _: Resource<RequestHandle>, name: String) -> Result<(), EditError> {
        checked_removal(&name)?;
        let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| EditError::InvalidHeaderName(name))?;
        let bytes = parsed.as_str().len();
        self.stage_response_edit(ResponseEdit::Remove(parsed), bytes)
    }

    fn drop(&mut self, _: Resource<RequestHandle>) -> Result<()> {
        // Filters only ever borrow the request; there is nothing to free.
        Ok(())
    }
}

impl types::HostResponse for FilterHost {
    fn status(&mut self, _: Resource<ResponseHandle>) -> u16 {
        self.response().status.as_u16()
    }

    fn set_status(&mut self, _: Resource<ResponseHandle>, status: u16) -> Result<(), EditError> {
        let code = StatusCode::from_u16(status)
            .ok()
            .filter(|c| FINAL_STATUSES.contains(&c.as_u16()))
            .ok_or(EditError::InvalidStatus(status))?;
        self.response_to_edit().set_status(code).map_err(|_| EditError::InvalidStatus(status))
    }

    fn header(&mut self, _: Resource<ResponseHandle>, name: String) -> Option<String> {
        first_value(&self.response().headers, &name)
    }

    fn header_values(&mut self, _: Resource<ResponseHandle>, name: String) -> Vec<String> {
        all_values(&self.response().headers, &name)
    }

    fn header_names(&mut self, _: Resource<ResponseHandle>) -> Vec<String> {
        names(&self.response().headers)
    }

    fn set_header(&mut self, _: Resource<ResponseHandle>, name: String, value: String) -> Result<(), EditError> {
        let output = self.output;
        let value = checked_header(&output, &self.response().headers, &name, value, false)?;
        self.response_to_edit().insert_header(name, value).map_err(refused_edit)
    }

    fn add_header(&mut self, _: Resource<ResponseHandle>, name: String, value: String) -> Result<(), EditError> {
        let output = self.output;
        let value = checked_header(&output, &self.response().headers, &name, value, true)?;
        self.response_to_edit().append_header(name, value).map(drop).map_err(refused_edit)
    }

    fn remove_header(&mut self, _: Resource<ResponseHandle>, name: String) {
        if framing(&name) {
            return;
        }
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes())
            && self.response().headers.contains_key(&n)
        {
            self.response_to_edit().remove_header(&n);
        }
    }

    fn drop(&mut self, _: Resource<ResponseHandle>) -> Result<()> {
        Ok(())
    }
}

impl log::Host for FilterHost {
    fn log(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Trace => ::log::Level::Trace,
            log::Level::Debug => ::log::Level::Debug,
            log::Level::Info => ::log::Level::Info,
            log::Level::Warn => ::log::Level::Warn,
            log::Level::Error => ::log::Level::Error,
        };
        // A line the logger would drop costs no allowance: debug lines under
        // the default `info` must not use up room that an error needs. (A
        // RUST_LOG message filter, `info/pattern`, is applied later: lines it
        // hides still count.)
        if !::log::log_enabled!(target: FILTER_LOG_TARGET, level) {
            return;
        }
        let (logged, allowed, what) = match level {
            ::log::Level::Error => (&mut self.logged.errors, MAX_LOG_ERRORS_PER_REQUEST, "error lines"),
            _ => (&mut self.logged.lines, MAX_LOG_LINES_PER_REQUEST, "log lines"),
        };
        *logged = logged.saturating_add(1);
        let InstanceTag { module, route, request_id } = &self.tag;
        if *logged > allowed {
            if *logged == allowed + 1 {
                ::log::warn!(
                    target: FILTER_LOG_TARGET,
                    "[{module} route={route} request={request_id}] more than {allowed} {what} for one request: \
                     the rest are dropped"
                );
            }
            return;
        }
        let line = log_line(&message);
        ::log::log!(target: FILTER_LOG_TARGET, level, "[{module} route={route} request={request_id}] {line}");
        if level == ::log::Level::Error {
            self.logged.last_error = Some(line);
        }
    }
}

/// `message` as one line of the proxy's log, of at most `MAX_LOG_LINE_BYTES`
/// (the rest is cut and counted), with control characters, Unicode line
/// separators and bidi controls escaped: a filter cannot write what passes
/// for another line (a line break, then someone else's tag) or send escape
/// sequences to a terminal.
fn log_line(message: &str) -> String {
    let mut line = String::with_capacity(message.len().min(MAX_LOG_LINE_BYTES) + 32);
    let mut taken = 0;
    for c in message.chars() {
        let before = line.len();
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
        if line.len() > MAX_LOG_LINE_BYTES {
            line.truncate(before);
            break;
        }
        taken += c.len_utf8();
    }
    if taken < message.len() {
        line.push_str(&format!("… ({} bytes more cut)", message.len() - taken));
    }
    line
}

impl config::Host for FilterHost {
    fn get(&mut self) -> String {
        self.config_json.to_string()
    }

    fn skip_on_response(&mut self) {
        // Only an `on-response` can say it has nothing to do.
        if self.response.is_some() {
            self.skips_on_response = true;
        }
    }

    fn upstream_groups(&mut self) -> Vec<String> {
        self.caps.upstream_groups.clone()
    }
}

impl rate_limit::Host for FilterHost {
    fn check(
        &mut self,
        policy: String,
        key: String,
        cost: u32,
    ) -> Result<rate_limit::Decision, rate_limit::CheckError> {
        let decision = if self.changes_nothing() {
            self.caps.rate_limits.check_without_taking(&policy, cost)
        } else {
            self.caps.rate_limits.check(&policy, &key, cost)
        };
        match decision {
            Ok(d) => Ok(rate_limit::Decision {
                allowed: d.allowed,
                limit: d.limit,
                remaining: d.remaining,
                reset_after_ms: millis_up(d.reset_after),
                retry_after_ms: millis_up(d.retry_after),
                window_ms: millis_up(d.window),
            }),
            Err(CheckError::UnknownPolicy(p)) => Err(rate_limit::CheckError::UnknownPolicy(p)),
            Err(CheckError::InvalidCost(c)) => Err(rate_limit::CheckError::InvalidCost(c)),
        }
    }
}

impl FilterHost {
    /// Whether this call's writes to shared state are checked and not made:
    /// in `check-config`, and for a request the proxy replays (a background
    /// cache refresh), whose client's request already made them.
    fn changes_nothing(&self) -> bool {
        self.checking_config || self.request.as_ref().is_some_and(|r| r.replay)
    }

    /// The store a filter writes to, and whether the write is to be made.
    fn kv_for_writing(&self, store: &str) -> Result<(&KvStore, bool), kv::KvError> {
        let store = self.caps.kv_stores.writable(store).map_err(kv_error)?;
        Ok((store, !self.changes_nothing()))
    }
}

fn kv_error(e: KvError) -> kv::KvError {
    use kv::KvError as W;
    match e {
        KvError::UnknownStore(s) => W::UnknownStore(s),
        KvError::ReadOnly(s) => W::ReadOnly(s),
        KvError::InvalidKey(k) => W::InvalidKey(k),
        KvError::ValueTooLarge(n) => W::ValueTooLarge(u32::try_from(n).unwrap_or(u32::MAX)),
        KvError::StoreFull(s) => W::StoreFull(s),
        KvError::NotANumber(m) => W::NotANumber(m),
    }
}

/// A TTL in milliseconds, at least 1.
fn ttl(ms: Option<u64>) -> Option<Duration> {
    ms.map(|ms| Duration::from_millis(ms.max(1)))
}

impl kv::Host for FilterHost {
    fn get(&mut self, store: String, key: String) -> Result<Option<String>, kv::KvError> {
        self.caps.kv_stores.store(&store).and_then(|s| s.get(&key)).map_err(kv_error)
    }

    fn set(&mut self, store: String, key: String, value: String, ttl_ms: Option<u64>) -> Result<(), kv::KvError> {
        match self.kv_for_writing(&store)? {
            (store, true) => store.set(&key, value, ttl(ttl_ms)),
            (store, false) => store.check_write(&key, value.len()),
        }
        .map_err(kv_error)
    }

    fn delete(&mut self, store: String, key: String) -> Result<bool, kv::KvError> {
        match self.kv_for_writing(&store)? {
            (store, true) => store.delete(&key),
            (store, false) => store.get(&key).map(|value| value.is_some()),
        }
        .map_err(kv_error)
    }

    fn increment(&mut self, store: String, key: String, delta: i64, ttl_ms: Option<u64>) -> Result<i64, kv::KvError> {
        match self.kv_for_writing(&store)? {
            (store, true) => store.increment(&key, delta, ttl(ttl_ms)),
            (store, false) => store.peek_increment(&key, delta),
        }
        .map_err(kv_error)
    }
}

fn fetch_error(e: FetchError) -> outbound::FetchError {
    use outbound::FetchError as W;
    match e {
        FetchError::InvalidRequest(what) => W::InvalidRequest(what),
        FetchError::LimitExceeded(what) => W::LimitExceeded(what),
        FetchError::Unreachable(what) => W::Unreachable(what),
        FetchError::Timeout => W::Timeout,
        FetchError::BadResponse(what) => W::BadResponse(what),
        FetchError::TooLarge(what) => W::LimitExceeded(what),
    }
}

impl outbound::Host for FilterHost {
    async fn fetch(
        &mut self,
        upstream: String,
        request: outbound::OutboundRequest,
    ) -> Result<outbound::OutboundResponse, outbound::FetchError> {
        use outbound::FetchError as W;
        let Some(head) = &self.request else {
            return Err(W::Unavailable("fetch is for on-request only".into()));
        };
        if !self.outbound_grants.contains(&upstream) {
            return Err(W::NotGranted(format!("this chain entry's outbound does not name {upstream:?}")));
        }
        let counts = self.caps.fetch_counts.clone();
        let count = |outcome| counts.record(&self.tag.module, &upstream, outcome);
        if self.fetches >= MAX_FETCHES_PER_CALL {
            count("refused");
            return Err(W::LimitExceeded(format!("more than {MAX_FETCHES_PER_CALL} fetches in one call")));
        }
        self.fetches += 1;
        // Config loading checked that every granted group exists.
        let upstreams = head.upstreams.clone();
        let group =
            upstreams.tier(&upstream, 0).ok_or_else(|| W::NotGranted(format!("no upstream group {upstream:?}")))?;
        // The fetches of one call together wait at most one allowance of
        // the group, and a call already past its deadline waits for none.
        let allowed = fetching::time_allowed(group).saturating_sub(self.fetch_wait);
        let left = self.deadline.left();
        if allowed.is_zero() || left.is_some_and(|left| left.is_zero()) {
            count("timeout");
            return Err(W::Timeout);
        }
        let from = fetching::Origin {
            host: group.config.tls.as_ref().map_or(upstream.as_str(), |tls| tls.sni.as_str()),
            request_id: &head.id,
            cdn_loop_seen: &head.header.headers,
            cdn_loop_member: self.caps.cdn_loop_member.as_ref(),
        };
        let fetch = Fetch {
            method: request.method,
            path_with_query: request.path_with_query,
            headers: request.headers,
            body: request.body,
        };
        let sent = fetching::request_header(&fetch, &from).map_err(|e| {
            count(e.outcome());
            fetch_error(e)
        })?;
        let to = fetching::Destination { group, key_hash: crate::upstream::key_hash(&head.id), allowed };
        // While it waits, the call's deadline is the fetch's; after, the
        // call has the time it had left before.
        let started = Instant::now();
        if let Some(left) = left {
            self.deadline.set(started + allowed + left);
        }
        let fetched = fetching::send(to, sent, fetch.body.into()).await;
        self.fetch_wait += started.elapsed();
        if let Some(left) = left {
            self.deadline.set(Instant::now() + left);
        }
        count(fetched.as_ref().map_or_else(FetchError::outcome, |_| "answered"));
        let fetched = fetched.map_err(fetch_error)?;
        Ok(outbound::OutboundResponse { status: fetched.status, headers: fetched.headers, body: fetched.body })
    }
}

/// Whole milliseconds, rounded up: a client told to wait 2,000 ms after a
/// wait of 2,000.7 ms would be refused again.
fn millis_up(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

impl jwt::Host for FilterHost {
    fn verify(&mut self, token: String, keyset: String) -> Result<String, jwt::VerifyError> {
        use jwt::VerifyError as W;
        let Some(set) = self.caps.keysets.get(&keyset) else {
            return Err(W::UnknownKeyset(keyset));
        };
        set.verify(&token).map_err(|e| match e {
            VerifyError::UnknownKeyset(k) => W::UnknownKeyset(k),
            VerifyError::Malformed(m) => W::Malformed(m),
            VerifyError::AlgorithmNotAllowed(a) => W::AlgorithmNotAllowed(a),
            VerifyError::UnknownKey => W::UnknownKey,
            VerifyError::BadSignature => W::BadSignature,
            VerifyError::Expired => W::Expired,
            VerifyError::NotYetValid => W::NotYetValid,
            VerifyError::WrongIssuer => W::WrongIssuer,
            VerifyError::WrongAudience => W::WrongAudience,
        })
    }
}

impl regex::Host for FilterHost {
    fn is_match(&mut self, pattern: String, text: String) -> Result<bool, String> {
        self.caps.patterns.is_match(&pattern, &text)
    }

    fn replace(&mut self, pattern: String, text: String, replacement: String) -> Result<Option<String>, String> {
        // No result longer than the filter's memory could take back.
        self.caps.patterns.replace(&pattern, &text, &replacement, self.limiter.memory_bytes)
    }

    fn capture_names(&mut self, pattern: String) -> Result<Vec<Option<String>>, String> {
        self.caps.patterns.capture_names(&pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_line_escapes_control_characters_and_cuts_at_a_char_boundary() {
        assert_eq!(log_line("one\n[other route=x] two\r\x1b[31m"), "one\\n[other route=x] two\\r\\u{1b}[31m");
        assert_eq!(log_line("fine, ünïcode stays"), "fine, ünïcode stays");
        assert_eq!(log_line("a\u{2028}b\u{202e}c"), "a\\u{2028}b\\u{202e}c");
        // Escapes count toward the limit: 4 KiB of them make a 4 KiB line.
        let escaped = log_line(&"\x01".repeat(MAX_LOG_LINE_BYTES));
        assert!(escaped.starts_with("\\u{1}") && escaped.len() <= MAX_LOG_LINE_BYTES + 32, "{} bytes", escaped.len());
        assert!(
            escaped
                .ends_with(&format!("… ({} bytes more cut)", MAX_LOG_LINE_BYTES - MAX_LOG_LINE_BYTES / "\\u{1}".len()))
        );
        // A four-byte character across the limit is cut whole.
        let message = format!("{}🦀{}", "a".repeat(MAX_LOG_LINE_BYTES - 2), "b".repeat(10));
        let line = log_line(&message);
        assert_eq!(line, format!("{}… (14 bytes more cut)", "a".repeat(MAX_LOG_LINE_BYTES - 2)));
    }

    #[test]
    fn the_handles_an_instance_may_hold_are_bounded() {
        let mut table = resource_table();
        for _ in 0..MAX_RESOURCES {
            table.push(()).unwrap();
        }
        assert!(table.push(()).is_err(), "a handle past the bound was taken");
    }

    #[test]
    fn the_memory_cap_holds_for_all_of_an_instances_memories_together() {
        let mut limiter = InstanceLimiter { memory_bytes: 16 << 20, memory_cap_hit: false, memory_in_use: 0 };
        // Two memories of 6 MiB each fit; growing one of them by 6 MiB more
        // would not, though each alone would be under the cap.
        assert!(limiter.memory_growing(0, 6 << 20, None).unwrap());
        assert!(limiter.memory_growing(0, 6 << 20, None).unwrap());
        assert!(limiter.memory_growing(6 << 20, 12 << 20, None).is_err());
        assert!(limiter.memory_cap_hit);
        assert_eq!(limiter.memory_in_use, 12 << 20);
        assert!(limiter.memory_growing(6 << 20, 10 << 20, None).unwrap());
        assert_eq!(limiter.memory_in_use, 16 << 20);
    }

    #[test]
    fn value_text_keeps_utf8_and_replaces_other_bytes() {
        let token = HeaderValue::from_static("Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig");
        assert_eq!(value_text(&token), "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig");
        let latin1 = HeaderValue::from_bytes(b"caf\xe9 ok").expect("obs-text is a valid value");
        assert_eq!(value_text(&latin1), "caf\u{fffd} ok");
    }

    #[test]
    fn waits_are_given_in_whole_milliseconds_rounded_up() {
        assert_eq!(millis_up(Duration::from_micros(2_000_700)), 2_001);
        assert_eq!(millis_up(Duration::from_nanos(1)), 1);
        assert_eq!(millis_up(Duration::from_secs(2)), 2_000);
        assert_eq!(millis_up(Duration::ZERO), 0);
    }

    #[test]
    fn header_edits_are_checked_before_pingora_sees_them() {
        let limits = OutputLimits { header_value_bytes: 8, header_count: 2, reply_body_bytes: 0 };
        let mut headers = http::HeaderMap::new();
        let check = |headers: &http::HeaderMap, name: &str, value: &str, appending| {
            checked_header(&limits, headers, name, value.to_string(), appending)
        };
        assert!(matches!(check(&headers, "X-Edge", "ok", false), Ok(v) if v == "ok"));
        assert!(
            matches!(check(&headers, "bad name", "ok", false), Err(EditError::InvalidHeaderName(n)) if n == "bad name")
        );
        assert!(matches!(check(&headers, "", "ok", false), Err(EditError::InvalidHeaderName(_))));
        for owned in ["Content-Length", "transfer-encoding", "Connection", "te", "upgrade"] {
            assert!(matches!(check(&headers, owned, "1", false), Err(EditError::InvalidHeaderName(_))), "{owned}");
        }
        // Hop-by-hop fields may be removed (`Upgrade`, to refuse WebSockets);
        // the framing may not.
        assert!(checked_removal("Upgrade").is_ok() && checked_removal("connection").is_ok());
        assert!(checked_removal("Transfer-Encoding").is_err() && checked_removal("content-length").is_err());
        assert!(matches!(check(&headers, "x-a", "a\r\nb", false), Err(EditError::InvalidHeaderValue(n)) if n == "x-a"));
        assert!(matches!(check(&headers, "x-a", "123456789", false), Err(EditError::LimitExceeded(_))));
        let long = "x".repeat(MAX_HEADER_NAME_BYTES + 1);
        assert!(matches!(check(&headers, &long, "1", false), Err(EditError::LimitExceeded(_))));
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert("x-b", HeaderValue::from_static("2"));
        // At the count: replacing one that is there is fine, a third is not.
        assert!(check(&headers, "X-A", "3", false).is_ok());
        assert!(matches!(check(&headers, "x-a", "3", true), Err(EditError::LimitExceeded(_))));
        assert!(matches!(check(&headers, "x-c", "3", false), Err(EditError::LimitExceeded(_))));
        // Cookie lines count as the one header admission counted them as: a
        // client with many cannot make every filter edit fail.
        let mut cookies = http::HeaderMap::new();
        for _ in 0..5 {
            cookies.append("cookie", HeaderValue::from_static("a=1"));
        }
        assert!(check(&cookies, "x-c", "3", false).is_ok());
        cookies.insert("x-a", HeaderValue::from_static("1"));
        assert!(matches!(check(&cookies, "x-c", "3", false), Err(EditError::LimitExceeded(_))));
    }

    #[test]
    fn pingora_keeps_the_case_of_a_name_given_as_text() {
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        request.insert_header("x-edge", "old").unwrap();
        request.insert_header(String::from("X-Edge"), HeaderValue::from_static("cascade")).unwrap();
        let mut wire = Vec::new();
        request.header_to_h1_wire(&mut wire);
        assert_eq!(String::from_utf8(wire).unwrap(), "X-Edge: cascade\r\n");
    }
}
