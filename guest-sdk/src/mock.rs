//! A native mock host, so that filters can be unit-tested with plain
//! `cargo test`. It keeps the request and response in memory and applies the
//! same edit rules as the real host.

use std::cell::RefCell;

use crate::EditError;
use crate::client;

#[derive(Debug, Clone, Default)]
struct Headers(Vec<(String, String)>);

impl Headers {
    fn get(&self, name: &str) -> Option<String> {
        self.values(name).into_iter().next()
    }
    fn values(&self, name: &str) -> Vec<String> {
        self.0.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).collect()
    }
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (n, _) in &self.0 {
            let n = n.to_ascii_lowercase();
            if !names.contains(&n) {
                names.push(n);
            }
        }
        names
    }
    fn set(&mut self, name: &str, value: &str) -> Result<(), EditError> {
        check_header(name, value)?;
        if self.get(name).is_none() {
            self.check_count()?;
        }
        self.remove(name);
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
        Ok(())
    }
    fn add(&mut self, name: &str, value: &str) -> Result<(), EditError> {
        check_header(name, value)?;
        self.check_count()?;
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
        Ok(())
    }
    /// A header the message came with: as many as a test likes (the count
    /// limits what a filter adds).
    fn given(&mut self, name: &str, value: &str) {
        check_header(name, value).expect("valid header");
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
    }
    /// The host's count: every line but `Cookie`'s, which count as one.
    fn check_count(&self) -> Result<(), EditError> {
        let cookie_lines = self.0.iter().filter(|(n, _)| n == "cookie").count();
        if self.0.len() - cookie_lines.saturating_sub(1) >= MAX_HEADERS {
            return Err(EditError::LimitExceeded(format!("more than {MAX_HEADERS} headers")));
        }
        Ok(())
    }
    fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }
}

/// The host's default limits on what a filter writes (`limits.max_headers`
/// and `max_header_value_kb`).
const MAX_HEADER_VALUE_BYTES: usize = 16 << 10;
const MAX_HEADERS: usize = 256;
const MAX_STAGED_EDITS: usize = 256;
const MAX_STAGED_BYTES: usize = 64 << 10;

/// The host's checks, with its default value limit.
fn check_header(name: &str, value: &str) -> Result<(), EditError> {
    if value.len() > MAX_HEADER_VALUE_BYTES {
        return Err(EditError::LimitExceeded(format!("value of {name:?} longer than {MAX_HEADER_VALUE_BYTES} bytes")));
    }
    client::check_header(name, value)
}

/// The framing, which the host keeps: removing it does nothing.
fn framing(name: &str) -> bool {
    client::FRAMING.iter().any(|owned| owned.eq_ignore_ascii_case(name))
}

#[derive(Debug, Clone)]
enum ResponseEdit {
    Set(String, String),
    Add(String, String),
    Remove(String),
}

#[derive(Debug, Clone)]
struct RequestState {
    id: String,
    method: String,
    path: String,
    query: Option<String>,
    headers: Headers,
    client_ip: String,
    route_name: String,
    upstream: String,
    upstreams: Vec<String>,
    /// Staged response header edits, in order.
    response_edits: Vec<ResponseEdit>,
}

/// A request held by the mock host. Build one with [`Request::new`] and the
/// `with_*` methods, hand it to a filter, then assert on its fields.
#[derive(Debug)]
pub struct Request(RefCell<RequestState>);

impl Request {
    /// A request for `method` and `path_and_query` (for example `/a?b=1`), from
    /// client `127.0.0.1`, on route `test`, going to upstream group `origin`.
    pub fn new(method: &str, path_and_query: &str) -> Self {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (path_and_query.to_string(), None),
        };
        Self(RefCell::new(RequestState {
            id: "test-request".into(),
            method: method.into(),
            path,
            query,
            headers: Headers::default(),
            client_ip: "127.0.0.1".into(),
            route_name: "test".into(),
            upstream: "origin".into(),
            upstreams: vec!["origin".into()],
            response_edits: Vec::new(),
        }))
    }
    /// Add a request header.
    pub fn with_header(self, name: &str, value: &str) -> Self {
        self.0.borrow_mut().headers.given(name, value);
        self
    }
    /// Set the client IP.
    pub fn with_client_ip(self, ip: &str) -> Self {
        self.0.borrow_mut().client_ip = ip.into();
        self
    }
    /// Set the route name.
    pub fn with_route_name(self, name: &str) -> Self {
        self.0.borrow_mut().route_name = name.into();
        self
    }
    /// Declare the upstream groups that exist; the first is the current one.
    pub fn with_upstreams(self, groups: &[&str]) -> Self {
        {
            let mut state = self.0.borrow_mut();
            state.upstreams = groups.iter().map(|g| g.to_string()).collect();
            state.upstream = groups.first().map(|g| g.to_string()).unwrap_or_default();
        }
        self
    }

    /// The host-assigned request id.
    pub fn id(&self) -> String {
        self.0.borrow().id.clone()
    }
    /// The method, for example `GET`.
    pub fn method(&self) -> String {
        self.0.borrow().method.clone()
    }
    /// Replace the method.
    pub fn set_method(&self, method: &str) -> Result<(), EditError> {
        if !client::is_token(method) {
            return Err(EditError::InvalidMethod(method.into()));
        }
        self.0.borrow_mut().method = method.into();
        Ok(())
    }
    /// The path without the query.
    pub fn path(&self) -> String {
        self.0.borrow().path.clone()
    }
    /// Replace the path; it must start with `/`.
    pub fn set_path(&self, path: &str) -> Result<(), EditError> {
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == b'?' || b == b'#' || b == 0x7f) {
            return Err(EditError::InvalidPath(path.into()));
        }
        self.0.borrow_mut().path = path.into();
        Ok(())
    }
    /// The query string without `?`.
    pub fn query(&self) -> Option<String> {
        self.0.borrow().query.clone()
    }
    /// Replace or remove the query string.
    pub fn set_query(&self, query: Option<&str>) -> Result<(), EditError> {
        if let Some(q) = query
            && q.bytes().any(|b| b <= b' ' || b == b'#' || b == 0x7f)
        {
            return Err(EditError::InvalidQuery(q.into()));
        }
        self.0.borrow_mut().query = query.map(str::to_string);
        Ok(())
    }
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.0.borrow().headers.get(name)
    }
    /// Every value of a header.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.0.borrow().headers.values(name)
    }
    /// The names of all headers, lower-case.
    pub fn header_names(&self) -> Vec<String> {
        self.0.borrow().headers.names()
    }
    /// Set a header, replacing existing values.
    pub fn set_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        self.0.borrow_mut().headers.set(name, value)
    }
    /// Append a header value.
    pub fn add_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        self.0.borrow_mut().headers.add(name, value)
    }
    /// Remove every value of a header.
    pub fn remove_header(&self, name: &str) {
        if !framing(name) {
            self.0.borrow_mut().headers.remove(name)
        }
    }
    /// The client's IP address.
    pub fn client_ip(&self) -> String {
        self.0.borrow().client_ip.clone()
    }
    /// The name of the matched route.
    pub fn route_name(&self) -> String {
        self.0.borrow().route_name.clone()
    }
    /// The upstream group the request will go to.
    pub fn upstream(&self) -> String {
        self.0.borrow().upstream.clone()
    }
    /// Send the request to another declared upstream group.
    pub fn set_upstream(&self, group: &str) -> Result<(), EditError> {
        let mut state = self.0.borrow_mut();
        if !state.upstreams.iter().any(|g| g == group) {
            return Err(EditError::UnknownUpstream(group.into()));
        }
        state.upstream = group.into();
        Ok(())
    }
    /// Stage a header for the response; see [`Request::respond_to`].
    pub fn set_response_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        check_header(name, value)?;
        self.stage(ResponseEdit::Set(name.into(), value.into()))
    }
    /// Stage an appended response header value; see [`Request::respond_to`].
    pub fn add_response_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        check_header(name, value)?;
        self.stage(ResponseEdit::Add(name.into(), value.into()))
    }
    /// Stage the removal of a response header; see [`Request::respond_to`].
    pub fn remove_response_header(&self, name: &str) -> Result<(), EditError> {
        client::check_removal(name)?;
        self.stage(ResponseEdit::Remove(name.into()))
    }
    fn stage(&self, edit: ResponseEdit) -> Result<(), EditError> {
        let edits = &mut self.0.borrow_mut().response_edits;
        if edits.len() >= MAX_STAGED_EDITS {
            return Err(EditError::LimitExceeded(format!("more than {MAX_STAGED_EDITS} staged response header edits")));
        }
        let size = |edit: &ResponseEdit| match edit {
            ResponseEdit::Set(name, value) | ResponseEdit::Add(name, value) => name.len() + value.len(),
            ResponseEdit::Remove(name) => name.len(),
        };
        if edits.iter().chain([&edit]).map(size).sum::<usize>() > MAX_STAGED_BYTES {
            return Err(EditError::LimitExceeded(format!(
                "more than {MAX_STAGED_BYTES} bytes of staged response headers"
            )));
        }
        edits.push(edit);
        Ok(())
    }
    /// Make the response edits this request staged on `response`, in order,
    /// as the host does at the filter's place in the response phase, just
    /// before its `on_response`, and hand it back.
    pub fn respond_to(&self, response: Response) -> Response {
        {
            let headers = &mut response.0.borrow_mut().1;
            for edit in &self.0.borrow().response_edits {
                // Checked when staged; one that would pass the header count
                // now is dropped, as the host drops (and logs) it.
                match edit {
                    ResponseEdit::Set(name, value) => drop(headers.set(name, value)),
                    ResponseEdit::Add(name, value) => drop(headers.add(name, value)),
                    ResponseEdit::Remove(name) => headers.remove(name),
                }
            }
        }
        response
    }
}

/// A response head held by the mock host.
#[derive(Debug)]
pub struct Response(RefCell<(u16, Headers)>);

impl Response {
    /// A response with this status and no headers.
    pub fn new(status: u16) -> Self {
        Self(RefCell::new((status, Headers::default())))
    }
    /// Add a response header.
    pub fn with_header(self, name: &str, value: &str) -> Self {
        self.0.borrow_mut().1.given(name, value);
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.0.borrow().0
    }
    /// Replace the status code.
    pub fn set_status(&self, status: u16) -> Result<(), EditError> {
        if !(200..=599).contains(&status) {
            return Err(EditError::InvalidStatus(status));
        }
        self.0.borrow_mut().0 = status;
        Ok(())
    }
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.0.borrow().1.get(name)
    }
    /// Every value of a header.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.0.borrow().1.values(name)
    }
    /// The names of all headers, lower-case.
    pub fn header_names(&self) -> Vec<String> {
        self.0.borrow().1.names()
    }
    /// Set a header, replacing existing values.
    pub fn set_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        self.0.borrow_mut().1.set(name, value)
    }
    /// Append a header value.
    pub fn add_header(&self, name: &str, value: &str) -> Result<(), EditError> {
        self.0.borrow_mut().1.add(name, value)
    }
    /// Remove every value of a header.
    pub fn remove_header(&self, name: &str) {
        if !framing(name) {
            self.0.borrow_mut().1.remove(name)
        }
    }
}

/// The mock host's log: lines go to stderr, where `cargo test` captures them.
pub mod log {
    /// Log at debug level.
    pub fn debug(message: &str) {
        eprintln!("[debug] {message}")
    }
    /// Log at info level.
    pub fn info(message: &str) {
        eprintln!("[info] {message}")
    }
    /// Log at warn level.
    pub fn warn(message: &str) {
        eprintln!("[warn] {message}")
    }
    /// Log at error level.
    pub fn error(message: &str) {
        eprintln!("[error] {message}")
    }
}

/// The proxy's upstream groups, as a test declares them.
pub mod upstreams {
    use std::cell::RefCell;

    thread_local! {
        static GROUPS: RefCell<Vec<String>> = RefCell::new(vec!["origin".to_string()]);
    }

    /// Declare the proxy's upstream groups (`["origin"]` until a test says
    /// otherwise).
    pub fn set_groups(groups: &[&str]) {
        GROUPS.with(|g| *g.borrow_mut() = groups.iter().map(|g| g.to_string()).collect());
    }

    /// The upstream groups of the proxy's config.
    pub fn groups() -> Vec<String> {
        GROUPS.with(|g| g.borrow().clone())
    }
}

/// The mock host's rate limiter: buckets that never refill, so tests are
/// deterministic. Declare policies with [`rate_limit::set_policy`].
pub mod rate_limit {
    use crate::{CheckError, Decision};
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::Duration;

    thread_local! {
        static POLICIES: RefCell<HashMap<String, u32>> = RefCell::new(HashMap::new());
        static TAKEN: RefCell<HashMap<(String, String), u32>> = RefCell::new(HashMap::new());
        static CHECKING_CONFIG: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Whether the filter is checking its config: writes to shared state
    /// are checked and not made.
    pub(crate) fn checking_config() -> bool {
        CHECKING_CONFIG.with(std::cell::Cell::get)
    }

    /// Run `check` as the host runs `check-config`: checks answer, and take
    /// nothing.
    pub(crate) fn while_checking_config<R>(check: impl FnOnce() -> R) -> R {
        CHECKING_CONFIG.with(|c| c.set(true));
        let result = check();
        CHECKING_CONFIG.with(|c| c.set(false));
        result
    }

    /// Declare `policy` with this burst, and empty its buckets.
    pub fn set_policy(policy: &str, burst: u32) {
        POLICIES.with(|p| p.borrow_mut().insert(policy.to_string(), burst));
        TAKEN.with(|t| t.borrow_mut().retain(|(p, _), _| p != policy));
    }

    /// Take `cost` from the bucket of `key` under `policy`.
    pub fn check(policy: &str, key: &str, cost: u32) -> Result<Decision, CheckError> {
        let burst = POLICIES
            .with(|p| p.borrow().get(policy).copied())
            .ok_or_else(|| CheckError::UnknownPolicy(policy.to_string()))?;
        if cost == 0 || cost > burst {
            return Err(CheckError::InvalidCost(cost));
        }
        let taking = !CHECKING_CONFIG.with(std::cell::Cell::get);
        TAKEN.with(|t| {
            let mut taken = t.borrow_mut();
            let used = taken.entry((policy.to_string(), key.to_string())).or_insert(0);
            let allowed = *used + cost <= burst;
            if allowed && taking {
                *used += cost;
            }
            Ok(Decision {
                allowed,
                limit: burst,
                remaining: burst - *used,
                reset_after: Duration::from_secs(u64::from(*used)),
                retry_after: if allowed { Duration::ZERO } else { Duration::from_secs(1) },
                window: Duration::from_secs(u64::from(burst)),
            })
        })
    }
}

/// The mock host's key-value stores: no key expires (a test reads the TTL a
/// write gave with [`kv::ttl`]), no store is ever full, values are bounded
/// by the host's default `max_value_bytes` (4,096), and writes from
/// `check-config` are checked and not made, as in the host. Declare stores
/// with [`kv::set_store`].
pub mod kv {
    use crate::KvError;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::time::Duration;

    /// The longest key, as in the host.
    const MAX_KEY_BYTES: usize = 256;
    /// The host's default `max_value_bytes`.
    const MAX_VALUE_BYTES: usize = 4_096;

    /// A store's keys, each with its value and the TTL it was given.
    type Keys = HashMap<String, (String, Option<Duration>)>;

    thread_local! {
        /// Each store's keys, and whether filters may write it.
        static STORES: RefCell<HashMap<String, (bool, Keys)>> = RefCell::new(HashMap::new());
    }

    /// Declare an empty `store`, writable by filters or not.
    pub fn set_store(store: &str, filters_may_write: bool) {
        STORES.with(|s| s.borrow_mut().insert(store.to_string(), (filters_may_write, HashMap::new())));
    }

    /// The TTL the write that made `key` gave it.
    pub fn ttl(store: &str, key: &str) -> Option<Duration> {
        STORES.with(|s| s.borrow().get(store).and_then(|(_, keys)| keys.get(key)).and_then(|(_, ttl)| *ttl))
    }

    /// As the admin API would: set `key`, whether filters may write or not.
    pub fn put(store: &str, key: &str, value: &str) {
        STORES.with(|s| {
            let mut stores = s.borrow_mut();
            let (_, keys) = stores.get_mut(store).expect("declare the store with set_store first");
            keys.insert(key.to_string(), (value.to_string(), None));
        })
    }

    /// Run `f` on `store`'s keys for an operation on `key` (a write when
    /// `write`), after the host's checks.
    fn with_store<R>(
        store: &str,
        key: &str,
        write: bool,
        f: impl FnOnce(&mut Keys) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        // In the host's order: the store, whether it may be written, the key.
        STORES.with(|s| {
            let mut stores = s.borrow_mut();
            let (writable, keys) = stores.get_mut(store).ok_or_else(|| KvError::UnknownStore(store.to_string()))?;
            if write && !*writable {
                return Err(KvError::ReadOnly(store.to_string()));
            }
            if key.is_empty() || key.len() > MAX_KEY_BYTES {
                return Err(KvError::InvalidKey(format!("{} bytes", key.len())));
            }
            // Writes in check-config act on a copy that is then dropped.
            if write && super::rate_limit::checking_config() {
                return f(&mut keys.clone());
            }
            f(keys)
        })
    }

    /// The value of `key` in `store`, if set.
    pub fn get(store: &str, key: &str) -> Result<Option<String>, KvError> {
        with_store(store, key, false, |keys| Ok(keys.get(key).map(|(value, _)| value.clone())))
    }

    /// Set `key` to `value`, with `ttl` if given.
    pub fn set(store: &str, key: &str, value: &str, ttl: Option<Duration>) -> Result<(), KvError> {
        let insert = |keys: &mut Keys| {
            if value.len() > MAX_VALUE_BYTES {
                return Err(KvError::ValueTooLarge(MAX_VALUE_BYTES as u32));
            }
            keys.insert(key.to_string(), (value.to_string(), ttl));
            Ok(())
        };
        with_store(store, key, true, insert)
    }

    /// Remove `key`; whether it was set.
    pub fn delete(store: &str, key: &str) -> Result<bool, KvError> {
        with_store(store, key, true, |keys| Ok(keys.remove(key).is_some()))
    }

    /// Add `delta` to the number at `key`; the sum.
    pub fn increment(store: &str, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        with_store(store, key, true, |keys| {
            let not_a_number = || KvError::NotANumber(format!("the value at key {key:?} is not a whole number"));
            let (start, kept) = match keys.get(key) {
                Some((value, kept)) => (value.parse::<i64>().map_err(|_| not_a_number())?, *kept),
                None => (0, ttl),
            };
            let sum = start.checked_add(delta).ok_or_else(not_a_number)?;
            keys.insert(key.to_string(), (sum.to_string(), kept));
            Ok(sum)
        })
    }
}

/// The mock host's JWT verifier: answers what the test told it to. A keyset
/// exists once a test declared it or set one of its tokens; other tokens of
/// it fail with `BadSignature`, and any keyset else is `UnknownKeyset`, as
/// in the host.
pub mod jwt {
    use crate::VerifyError;
    use std::cell::RefCell;
    use std::collections::{HashMap, HashSet};

    thread_local! {
        static TOKENS: RefCell<HashMap<(String, String), Result<String, VerifyError>>> = RefCell::new(HashMap::new());
        static KEYSETS: RefCell<HashSet<String>> = RefCell::new(HashSet::new());
    }

    /// Declare `keyset`, with no token that verifies.
    pub fn set_keyset(keyset: &str) {
        KEYSETS.with(|k| k.borrow_mut().insert(keyset.to_string()));
    }

    /// Make `verify(token, keyset)` return `outcome`.
    pub fn set_token(keyset: &str, token: &str, outcome: Result<&str, VerifyError>) {
        set_keyset(keyset);
        TOKENS.with(|t| t.borrow_mut().insert((keyset.to_string(), token.to_string()), outcome.map(str::to_string)));
    }

    /// Verify `token` with `keyset`; on success, its claims as JSON text.
    pub fn verify(token: &str, keyset: &str) -> Result<String, VerifyError> {
        if !KEYSETS.with(|k| k.borrow().contains(keyset)) {
            return Err(VerifyError::UnknownKeyset(keyset.to_string()));
        }
        TOKENS.with(|t| {
            t.borrow().get(&(keyset.to_string(), token.to_string())).cloned().unwrap_or(Err(VerifyError::BadSignature))
        })
    }
}

/// Real regular expressions, with the host's semantics.
pub mod regex {
    fn compile(pattern: &str) -> Result<::regex::Regex, String> {
        ::regex::Regex::new(pattern).map_err(|e| format!("invalid pattern {pattern:?}: {e}"))
    }

    /// Whether `pattern` matches anywhere in `text`.
    pub fn is_match(pattern: &str, text: &str) -> Result<bool, String> {
        Ok(compile(pattern)?.is_match(text))
    }

    /// Each capture group's name (`None` for an unnamed one), group 0 first.
    pub fn capture_names(pattern: &str) -> Result<Vec<Option<String>>, String> {
        Ok(compile(pattern)?.capture_names().map(|name| name.map(str::to_string)).collect())
    }

    /// Replace the first match, expanding `$1` and `${name}`.
    pub fn replace(pattern: &str, text: &str, replacement: &str) -> Result<Option<String>, String> {
        Ok(compile(pattern)?.captures(text).map(|caps| {
            let whole = caps.get(0).expect("group 0 always matches");
            let mut out = String::new();
            out.push_str(&text[..whole.start()]);
            caps.expand(replacement, &mut out);
            out.push_str(&text[whole.end()..]);
            out
        }))
    }
}

/// The mock host's outbound requests: a test grants the groups the chain
/// entry names with [`outbound::grant`], each with how it answers, and
/// reads what was sent with [`outbound::sent`]. As in the host, a fetch
/// from `check-config` is unavailable, and a group not granted is refused;
/// the host's other checks (on_response, limits, headers) are not made.
pub mod outbound {
    use crate::{FetchError, OutboundRequest, OutboundResponse};
    use std::cell::RefCell;
    use std::collections::HashMap;

    type Answer = Box<dyn Fn(&OutboundRequest) -> Result<OutboundResponse, FetchError>>;

    thread_local! {
        static GROUPS: RefCell<HashMap<String, Answer>> = RefCell::new(HashMap::new());
        static SENT: RefCell<Vec<(String, OutboundRequest)>> = const { RefCell::new(Vec::new()) };
    }

    /// Grant `upstream`, answered by `answer`.
    pub fn grant(upstream: &str, answer: impl Fn(&OutboundRequest) -> Result<OutboundResponse, FetchError> + 'static) {
        GROUPS.with(|g| g.borrow_mut().insert(upstream.to_string(), Box::new(answer)));
    }

    /// The fetches made so far, with their groups, oldest first.
    pub fn sent() -> Vec<(String, OutboundRequest)> {
        SENT.with(|s| s.borrow().clone())
    }

    /// Send `request` to `upstream`.
    pub fn fetch(upstream: &str, request: OutboundRequest) -> Result<OutboundResponse, FetchError> {
        if super::rate_limit::checking_config() {
            return Err(FetchError::Unavailable("fetch is for on-request only".into()));
        }
        let answer = GROUPS.with(|g| {
            let groups = g.borrow();
            let answer = groups.get(upstream).ok_or_else(|| FetchError::NotGranted(upstream.to_string()))?;
            Ok(answer(&request))
        })?;
        SENT.with(|s| s.borrow_mut().push((upstream.to_string(), request)));
        answer
    }
}
