//! A route's filter chain, and one request's run through it.
//!
//! Each link gets a pooled instance in its own `Store`, with its own deadline
//! and memory cap, so a failing filter can only hurt its own request. The
//! instance is fresh, or, for an entry that reuses instances, one that served
//! earlier requests cleanly (`reuse`).
//! A link whose filter said its `on-response` does nothing releases its
//! instance right after `on-request`, and is not called on the response.
//! Response header edits a filter staged in `on-request` are kept with its
//! link's index, and made at the link's place in the response phase.
//! When a link fails, its `on_error` decides: fail-closed ends the request
//! with its failure status (a 5xx); fail-open drops that instance and goes on
//! without it. Each link has a circuit breaker (`breaker`): while it is open
//! the link is not instantiated and `on_error` applies at once.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Instant;

use pingora::http::ResponseHeader;
use wasmtime::component::Resource;
use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::cascade::filter::types::{Reply, Verdict};
use super::breaker::{Admission, Breaker};
use super::capabilities::Capabilities;
use super::host::{
    CallDeadline, FilterHost, InstanceTag, MAX_HEADER_NAME_BYTES, RequestHead, ResponseEdit, apply_response_edits,
};
use super::module::{FilterModule, ModuleRegistry};
use super::reuse::{IdleInstances, Instance};
use super::runtime::FilterRuntime;
use crate::config::{FilterEntry, Location, OnError, OutputLimits};

/// The statuses a filter may answer with, or set on a response.
pub const FINAL_STATUSES: std::ops::RangeInclusive<u16> = 200..=599;

/// One configured link: a module and its settings on this route.
#[derive(Debug)]
pub struct ChainLink {
    pub module: Arc<FilterModule>,
    pub entry: FilterEntry,
    /// Shared with the same link of the config version before, if it runs
    /// the same module version with the same settings (`carried_breaker`).
    pub breaker: Arc<Breaker>,
    module_name: Arc<str>,
    /// Instances parked for the next request, if the entry reuses them.
    idle: IdleInstances,
    /// Cleared once the filter says its `on-response` does nothing: from
    /// then on the call (a few microseconds) is skipped. A link belongs to
    /// one module version, so a swap starts over with a new link.
    calls_on_response: AtomicBool,
}

/// A route's filters, in order. Cloning is two reference-count bumps, so a
/// request can keep its chain for the response phase without copying it.
#[derive(Debug, Clone, Default)]
pub struct FilterChain {
    pub links: Arc<[ChainLink]>,
    /// The host capabilities of the config version this chain belongs to.
    caps: Arc<Capabilities>,
}

/// Why a chain could not be built from config.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("{at}: module {module:?} is not loaded (loaded: {loaded}){hint}")]
    MissingModule { at: Location, module: String, loaded: String, hint: &'static str },
    #[error("{at}: module {module:?} rejected its config: {message}")]
    BadConfig { at: Location, module: String, message: String },
    /// The entry's memory cap is past the slots the engine was started
    /// with: `limits.filter_memory_mb` is raised only by a restart.
    #[error(
        "{at}: module {module:?}: a memory cap of {asked_mb} MiB is more than the {engine_mb} MiB the engine was started with; restart to raise limits.filter_memory_mb"
    )]
    MemoryPastEngine { at: Location, module: String, asked_mb: u64, engine_mb: u64 },
    /// Every instance slot was serving: the config could not be checked,
    /// which says nothing about the config. Try again when the load eases.
    #[error("{at}: module {module:?} could not check its config now: {message}")]
    NoFreeSlot { at: Location, module: String, message: String },
}

/// How a filter failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No instance could be made: a trap in its start-up.
    Instantiate,
    /// Every instance slot is serving (`limits.max_instances`): the proxy's
    /// capacity, not the filter, failed. It is answered with a 503, and the
    /// breaker does not count it: it must not switch off a healthy filter
    /// after the load has passed.
    PoolFull,
    /// The call ran past its CPU deadline.
    Timeout,
    /// The instance tried to grow memory past its cap.
    MemoryCap,
    /// The guest trapped (a panic, an out-of-bounds access, ...).
    Trap,
    /// The filter handed back more than the host allows (a reply too large).
    BadReturn,
    /// The circuit breaker is open: the filter was not run.
    BreakerOpen,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Instantiate => "instantiate",
            Self::PoolFull => "pool-full",
            Self::Timeout => "timeout",
            Self::MemoryCap => "memory-cap",
            Self::Trap => "trap",
            Self::BadReturn => "bad-return",
            Self::BreakerOpen => "breaker-open",
        }
    }
}

/// A filter that failed, and how.
#[derive(Debug, Clone)]
pub struct FilterFailure {
    pub module: Arc<str>,
    pub phase: &'static str,
    pub kind: FailureKind,
    pub detail: String,
    /// What the request gets if this entry fails closed.
    pub status: u16,
}

impl std::fmt::Display for FilterFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "filter {:?} failed in {} ({}): {}", self.module, self.phase, self.kind.as_str(), self.detail)
    }
}

/// What the request phase decided.
pub enum RequestOutcome {
    /// Forward the request upstream.
    Continue,
    /// A filter answered; send this reply (after the response phase).
    Respond(Reply),
    /// A fail-closed filter failed; answer with an error.
    Failed(FilterFailure),
}

/// The instances of one request, kept from the request phase to the response
/// phase, with the index of their link. Dropping it returns every slot to the
/// pool.
pub struct InFlightChain {
    chain: FilterChain,
    instances: Vec<(Instance, usize)>,
    /// Fail-open failures, for logging and metrics.
    pub skipped: Vec<FilterFailure>,
    /// How long each filter took in each phase, for the latency histograms.
    pub timings: Vec<FilterTiming>,
    /// The response header edits each link staged in `on-request`, with the
    /// index of the link, in chain order.
    staged: Vec<(usize, Vec<ResponseEdit>)>,
}

/// One filter's time in one phase (instantiation included in `on-request`).
#[derive(Debug, Clone)]
pub struct FilterTiming {
    pub module: Arc<str>,
    pub phase: &'static str,
    pub elapsed: std::time::Duration,
}

impl FilterChain {
    /// Drop the instances its links parked before `cutoff`; how many.
    pub fn expire_idle(&self, cutoff: std::time::Instant) -> usize {
        self.links.iter().map(|link| link.idle.expire(cutoff)).sum()
    }

    /// Resolve `entries` against `modules`, and ask each filter to check its
    /// config once, so a bad config is refused before it serves. `previous`
    /// is this route's chain in the config version being replaced, if any.
    pub async fn build(
        runtime: &FilterRuntime,
        modules: &ModuleRegistry,
        caps: &Arc<Capabilities>,
        route_name: &str,
        entries: &[FilterEntry],
        previous: Option<&FilterChain>,
    ) -> Result<Self, ChainError> {
        let mut links = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            if entry.limits.memory_bytes > runtime.max_memory_bytes() {
                return Err(ChainError::MemoryPastEngine {
                    at: entry.at.clone(),
                    module: entry.module.clone(),
                    asked_mb: entry.limits.memory_bytes >> 20,
                    engine_mb: runtime.max_memory_bytes() >> 20,
                });
            }
            let module = modules.get(&entry.module).ok_or_else(|| ChainError::MissingModule {
                at: entry.at.clone(),
                module: entry.module.clone(),
                loaded: modules.names().collect::<Vec<_>>().join(", "),
                hint: match modules.was_deleted(&entry.module) {
                    true => "; its file in the modules directory was deleted through the admin API: upload it again",
                    false => "",
                },
            })?;
            let link = ChainLink {
                module: module.clone(),
                entry: entry.clone(),
                breaker: carried_breaker(previous, index, module, entry)
                    .unwrap_or_else(|| Arc::new(Breaker::new(entry.limits.breaker))),
                module_name: Arc::from(entry.module.as_str()),
                idle: IdleInstances::default(),
                calls_on_response: AtomicBool::new(true),
            };
            let bad_config =
                |message: String| ChainError::BadConfig { at: entry.at.clone(), module: entry.module.clone(), message };
            let tag = InstanceTag {
                module: link.module_name.clone(),
                route: Arc::from(route_name),
                request_id: Arc::from("config-check"),
            };
            let mut instance = link.instantiate(runtime, caps, tag).await.map_err(|f| match f.kind {
                FailureKind::PoolFull => ChainError::NoFreeSlot {
                    at: entry.at.clone(),
                    module: entry.module.clone(),
                    message: f.to_string(),
                },
                _ => bad_config(f.to_string()),
            })?;
            let deadline = arm_deadline(&mut instance.store, &link, runtime, Instant::now());
            instance.store.data_mut().checking_config = true;
            let checked = within(deadline, instance.filter.call_check_config(&mut instance.store)).await;
            instance.store.data_mut().checking_config = false;
            match checked {
                Ok(Ok(())) => {}
                Ok(Err(message)) => return Err(bad_config(message)),
                Err(e) => {
                    // The operator, not a client, reads this: what the filter
                    // logged as an error (an SDK filter's panic) says why.
                    let mut message = classify(&link, "check-config", &instance.store, e).to_string();
                    if let Some(logged) = instance.store.data().last_error() {
                        message.push_str(&format!("; it logged: {logged}"));
                    }
                    return Err(bad_config(message));
                }
            }
            // The checking instance is as good as a fresh one: the first request
            // gets it warm.
            link.release(runtime, instance);
            links.push(link);
        }
        Ok(Self { links: links.into(), caps: caps.clone() })
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Run `on-request` on each link in order, stopping at the first reply or
    /// fail-closed failure. The head is handed back, edited, in every case.
    pub async fn run_request(
        &self,
        runtime: &FilterRuntime,
        mut head: RequestHead,
    ) -> (RequestHead, InFlightChain, RequestOutcome) {
        let mut run = InFlightChain {
            chain: self.clone(),
            instances: Vec::with_capacity(self.links.len()),
            skipped: Vec::new(),
            timings: Vec::with_capacity(self.links.len() * 2),
            staged: Vec::new(),
        };
        for (index, link) in self.links.iter().enumerate() {
            // While the breaker is open the filter is not run: its policy applies.
            let failure = if let Some(admission) = link.breaker.admit() {
                let (edited, outcome) =
                    link.run_on_request(runtime, &self.caps, head, admission, &mut run.timings).await;
                head = edited;
                // What the call staged for the response is kept only if the
                // call succeeded: a failed filter's response work is skipped.
                let staged = std::mem::take(&mut head.response_edits).edits;
                match outcome {
                    Ok((instance, verdict)) => {
                        if !staged.is_empty() {
                            run.staged.push((index, staged));
                        }
                        if link.calls_on_response.load(Ordering::Relaxed) {
                            run.instances.push((instance, index));
                        } else {
                            // Its response phase is skipped, so the instance is
                            // done: back to the idle list for the next request,
                            // rather than held while this one goes upstream.
                            link.finished(runtime, instance);
                        }
                        match verdict {
                            Verdict::Continue => continue,
                            Verdict::Respond(reply) => return (head, run, RequestOutcome::Respond(reply)),
                        }
                    }
                    Err(failure) => {
                        link.count_failure(admission, &failure);
                        failure
                    }
                }
            } else {
                link.breaker_open()
            };
            match link.entry.on_error {
                OnError::FailOpen => {
                    // An open breaker's skips are counted, not logged one by one.
                    if failure.kind != FailureKind::BreakerOpen {
                        log::warn!("request {}: {failure}; fail-open, skipping it", head.id);
                    }
                    run.skipped.push(failure);
                }
                OnError::FailClosed => return (head, run, RequestOutcome::Failed(failure)),
            }
        }
        (head, run, RequestOutcome::Continue)
    }
}

impl InFlightChain {
    /// The response phase, in reverse chain order over the links whose
    /// `on-request` ran: each link's staged response edits are made at its
    /// place, as if its `on-response` had made them, then its `on-response`
    /// runs if it has one. Returns the edited head, or the first fail-closed
    /// failure.
    pub async fn run_response(
        &mut self,
        runtime: &FilterRuntime,
        mut response: ResponseHeader,
        request_id: &str,
    ) -> (ResponseHeader, Result<(), FilterFailure>) {
        loop {
            let staged_at = self.staged.last().map(|(index, _)| *index);
            let instance_at = self.instances.last().map(|(_, index)| *index);
            let Some(index) = staged_at.max(instance_at) else { break };
            let link = &self.chain.links[index];
            if staged_at == Some(index) {
                let (_, edits) = self.staged.pop().expect("just seen");
                apply_response_edits(edits, &mut response, &link.entry.limits.output, &link.module_name, request_id);
            }
            if instance_at != Some(index) {
                continue;
            }
            let (mut instance, _) = self.instances.pop().expect("just seen");
            if !link.calls_on_response.load(Ordering::Relaxed) {
                // It said so after this request's on-request ran.
                link.finished(runtime, instance);
                continue;
            }
            let started = Instant::now();
            let deadline = arm_deadline(&mut instance.store, link, runtime, started);
            instance.store.data_mut().response = Some(response);
            let call = instance.filter.call_on_response(&mut instance.store, Resource::new_borrow(0));
            let result = within(deadline, call).await;
            self.timings.push(FilterTiming {
                module: link.module_name.clone(),
                phase: "on-response",
                elapsed: started.elapsed(),
            });
            // A failed call's edits are undone (for a fail-open entry; a
            // fail-closed one answers with an error instead).
            instance.store.data_mut().end_call(result.is_err());
            response = instance.store.data_mut().response.take().expect("response returned to host");
            if result.is_ok() && instance.store.data().skips_on_response {
                link.calls_on_response.store(false, Ordering::Relaxed);
            }
            // The breaker counts an instance once, when it is done: here,
            // after both phases; for a link that skips on-response, after
            // on-request. (An instance dropped before its response phase, say
            // after an upstream error, is not counted either way.)
            match result {
                Ok(()) => link.finished(runtime, instance),
                Err(e) => {
                    let failure = classify(link, "on-response", &instance.store, e);
                    link.count_failure(instance.admission, &failure);
                    match link.entry.on_error {
                        OnError::FailOpen => {
                            log::warn!("request {request_id}: {failure}; fail-open, skipping it");
                            self.skipped.push(failure);
                        }
                        OnError::FailClosed => return (response, Err(failure)),
                    }
                }
            }
        }
        (response, Ok(()))
    }
}

impl ChainLink {
    /// A failure of this link, answered with its failure status if it fails closed.
    fn failure(&self, phase: &'static str, kind: FailureKind, detail: String) -> FilterFailure {
        FilterFailure {
            module: self.module_name.clone(),
            phase,
            kind,
            detail,
            status: self.entry.limits.failure_status,
        }
    }

    /// The failure a request gets while this link's breaker is open.
    fn breaker_open(&self) -> FilterFailure {
        let config = self.breaker.config();
        let detail = format!(
            "circuit breaker open: it failed on more than {:.0}% of calls; next try after {:?}",
            config.failure_ratio * 100.0,
            config.cooldown
        );
        self.failure("on-request", FailureKind::BreakerOpen, detail)
    }

    /// One `on-request` call. The head comes back, edited, even when the
    /// filter fails: the host holds it, never the guest.
    async fn run_on_request(
        &self,
        runtime: &FilterRuntime,
        caps: &Arc<Capabilities>,
        head: RequestHead,
        admission: Admission,
        timings: &mut Vec<FilterTiming>,
    ) -> (RequestHead, Result<(Instance, Verdict), FilterFailure>) {
        let started = Instant::now();
        let tag = InstanceTag {
            module: self.module_name.clone(),
            route: head.route_name.clone(),
            request_id: head.id.clone(),
        };
        let reused = if self.entry.reuse_instances { self.idle.take(runtime, tag.clone()) } else { None };
        let mut instance = match reused {
            Some(instance) => instance,
            None => match self.instantiate(runtime, caps, tag).await {
                Ok(instance) => instance,
                Err(failure) => return (head, Err(failure)),
            },
        };
        instance.admission = admission;
        let store = &mut instance.store;
        let deadline = arm_deadline(store, self, runtime, started);
        store.data_mut().request = Some(head);
        let verdict = within(deadline, instance.filter.call_on_request(&mut *store, Resource::new_borrow(0))).await;
        timings.push(FilterTiming {
            module: self.module_name.clone(),
            phase: "on-request",
            elapsed: started.elapsed(),
        });
        let outcome = match verdict {
            Ok(Verdict::Respond(reply)) => match refused_reply(&reply, &self.entry.limits.output) {
                Some(detail) => Err(self.failure("on-request", FailureKind::BadReturn, detail)),
                None => Ok(Verdict::Respond(reply)),
            },
            Ok(Verdict::Continue) => Ok(Verdict::Continue),
            Err(e) => Err(classify(self, "on-request", &instance.store, e)),
        };
        // A failed call's edits are undone (for a fail-open entry; a
        // fail-closed one answers with an error instead), so its failure
        // skips the filter whole: the upstream sees the request as it was.
        let host = instance.store.data_mut();
        host.end_call(outcome.is_err());
        let head = host.request.take().expect("request returned to host");
        (head, outcome.map(|verdict| (instance, verdict)))
    }

    /// Count a failed call in the breaker. A full pool is the proxy's
    /// capacity, not the filter, failing: it is not counted, and a probe it
    /// stopped is given back, so the next request probes at once.
    fn count_failure(&self, admission: Admission, failure: &FilterFailure) {
        if failure.kind == FailureKind::PoolFull {
            self.breaker.abandon(admission);
        } else {
            self.breaker.record(admission, true);
        }
    }

    /// An instance done cleanly (after on-response, or after on-request when
    /// the link skips on-response): the breaker counts it, and it is released.
    fn finished(&self, runtime: &FilterRuntime, instance: Instance) {
        self.breaker.record(instance.admission, false);
        self.release(runtime, instance);
    }

    /// Hand back an instance that finished cleanly: parked for the next
    /// request if the entry reuses instances, dropped otherwise.
    fn release(&self, runtime: &FilterRuntime, instance: Instance) {
        if self.entry.reuse_instances {
            self.idle.park(runtime, instance, self.memory_cap());
        }
    }

    /// This entry's memory cap (within the runtime's largest: `build`
    /// refuses one past it).
    fn memory_cap(&self) -> u64 {
        self.entry.limits.memory_bytes
    }

    async fn instantiate(
        &self,
        runtime: &FilterRuntime,
        caps: &Arc<Capabilities>,
        tag: InstanceTag,
    ) -> Result<Instance, FilterFailure> {
        let host = FilterHost::new(tag, runtime.instance_opened(), caps.clone(), &self.entry);
        let mut store = Store::new(runtime.engine(), host);
        store.limiter(|host| &mut host.limiter);
        let tick = runtime.tick().clone();
        store.epoch_deadline_callback(move |store| {
            Ok(match store.data().deadline.left() {
                Some(left) if !left.is_zero() => UpdateDeadline::Continue(tick.ticks_for(left)),
                _ => UpdateDeadline::Interrupt,
            })
        });
        // Start functions run guest code too, so they get the same deadline.
        let deadline = arm_deadline(&mut store, self, runtime, Instant::now());
        match within(deadline, self.module.pre.instantiate_async(&mut store)).await {
            Ok(filter) => {
                let memory_at_start = store.data().limiter.memory_in_use;
                Ok(Instance { store, filter, served: 0, memory_at_start, admission: Admission::Call })
            }
            Err(e) => {
                let mut failure = classify(self, "instantiate", &store, e);
                if failure.kind == FailureKind::Trap {
                    failure.kind = FailureKind::Instantiate;
                }
                Err(failure)
            }
        }
    }
}

/// The breaker of the link at `index` of `previous`, if that link runs the
/// same module version with the same config and limits: a change to another
/// module, or a reload, must not switch a failing filter back on, nor
/// forget how a healthy one has done. A changed filter starts closed.
fn carried_breaker(
    previous: Option<&FilterChain>,
    index: usize,
    module: &FilterModule,
    entry: &FilterEntry,
) -> Option<Arc<Breaker>> {
    let link = previous?.links.get(index)?;
    let same = link.module.sha256 == module.sha256
        && link.entry.module == entry.module
        && link.entry.config_json == entry.config_json
        && link.entry.limits == entry.limits
        && link.entry.outbound == entry.outbound;
    same.then(|| link.breaker.clone())
}

/// Why `reply` cannot be sent, if it cannot: a status that is no final
/// one (a 1xx would leave the client waiting for the real answer), or more
/// than the entry's limits let through.
fn refused_reply(reply: &Reply, limits: &OutputLimits) -> Option<String> {
    if !FINAL_STATUSES.contains(&reply.status) {
        return Some(format!("reply status {} is not a final status (200 to 599)", reply.status));
    }
    if reply.body.len() > limits.reply_body_bytes {
        return Some(format!("reply body of {} bytes exceeds {}", reply.body.len(), limits.reply_body_bytes));
    }
    if reply.headers.len() > limits.header_count {
        return Some(format!("reply with {} headers exceeds {}", reply.headers.len(), limits.header_count));
    }
    reply
        .headers
        .iter()
        .find(|(n, v)| n.len() > MAX_HEADER_NAME_BYTES || v.len() > limits.header_value_bytes)
        .map(|(n, _)| format!("reply header {:?} exceeds the size limit", n.chars().take(64).collect::<String>()))
}

/// Give the next call `link`'s timeout from `now`. The deadline is an
/// instant, and the epoch deadline only says when to check it next: if the
/// tick changed since (a reload fitted it to another config), the check
/// finds time left and counts the ticks again (the store's callback, set in
/// `instantiate`), so no call is stopped early or much late. The call also
/// gets its own allowance of fetches (`FilterHost::start_call`).
fn arm_deadline(
    store: &mut Store<FilterHost>,
    link: &ChainLink,
    runtime: &FilterRuntime,
    now: Instant,
) -> Arc<CallDeadline> {
    let timeout = link.entry.limits.timeout;
    let deadline = store.data_mut().start_call(now + timeout);
    store.set_epoch_deadline(runtime.tick().ticks_for(timeout));
    deadline
}

/// A call cut off at its deadline while it waited on the host.
#[derive(Debug)]
struct WaitedPastDeadline;

impl std::fmt::Display for WaitedPastDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("waited past its deadline")
    }
}

impl std::error::Error for WaitedPastDeadline {}

/// Run one call into a filter until it ends or `deadline` passes. The epoch
/// deadline interrupts guest code only while it runs; a call waiting on the
/// host (a WASI pollable: a sleep) is cut off here instead, so it cannot
/// hold its request and pool slot past its deadline. A fetch moves the
/// deadline for its own wait, so the timer follows it. A call that never
/// waits (only `auth_request` of the filters we ship does, to fetch) never
/// starts a timer. A call cut off leaves its instance unusable; every
/// caller drops an instance that failed.
async fn within<T>(
    deadline: Arc<CallDeadline>,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let mut call = std::pin::pin!(call);
    let mut timer = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = call.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        let Some(at) = deadline.at() else { return Poll::Pending };
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())));
        // A fetch moves the deadline later while it waits, and back after.
        if timer.deadline() != at.into() {
            timer.as_mut().reset(at.into());
        }
        timer.as_mut().poll(cx).map(|()| Err(wasmtime::Error::new(WaitedPastDeadline)))
    })
    .await
}

fn classify(link: &ChainLink, phase: &'static str, store: &Store<FilterHost>, error: wasmtime::Error) -> FilterFailure {
    if let Some(full) = error.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
        let detail = format!("no instance slot is free ({full}; limits.max_instances)");
        return FilterFailure { status: 503, ..link.failure(phase, FailureKind::PoolFull, detail) };
    }
    let kind = if store.data().limiter.memory_cap_hit {
        FailureKind::MemoryCap
    } else if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt))
        || error.downcast_ref::<WaitedPastDeadline>().is_some()
    {
        FailureKind::Timeout
    } else {
        FailureKind::Trap
    };
    let detail = match (kind, error.downcast_ref::<Trap>()) {
        (FailureKind::Timeout, Some(_)) => format!("ran past its {:?} CPU deadline", link.entry.limits.timeout),
        (FailureKind::Timeout, None) => format!("waited past its {:?} deadline", link.entry.limits.timeout),
        // The trap itself ("wasm `unreachable` instruction executed", ...);
        // the formatted error would lead with a backtrace header.
        (_, Some(trap)) => trap.to_string(),
        _ => format!("{error:#}").lines().next().unwrap_or_default().to_string(),
    };

    link.failure(phase, kind, detail)
}
