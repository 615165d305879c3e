//! Instances kept between requests, for chain entries that set
//! `reuse_instances = true`.
//!
//! Creating and dropping a pooled instance is most of a small filter's cost
//! (about 5.6 µs of a 6.5 µs no-op cycle on the benchmark machine;
//! docs/BENCHMARKS.md). An entry that opts in parks each instance that
//! finished both phases of a request cleanly and hands it to a later
//! request, as proxy-wasm keeps one VM per worker.
//! What still holds:
//! - an instance serves one request at a time, both of its phases;
//! - an instance that failed in any way (trap, deadline, memory cap, bad
//!   return), or whose request ended before its response phase, is dropped,
//!   never parked;
//! - an instance is retired after [`MAX_REQUESTS_PER_INSTANCE`] requests, or
//!   once its memory has grown into more than half of the room between its
//!   module's initial memory and its cap, so a guest that leaks a little per
//!   request is replaced before the leak can fail a request;
//! - idle instances hold pool slots, so a link keeps at most
//!   [`MAX_IDLE_PER_LINK`] and the runtime at most a quarter of
//!   `limits.max_instances` (`FilterRuntime::instance_parked`), and one
//!   idle past `limits.idle_instance_timeout_secs` is dropped
//!   ([`IdleInstances::expire`]): after a burst, the slots and memory it
//!   took are given back;
//! - the idle instances belong to their chain link, so a reload or a module
//!   swap drops them with the config version they were made for, or
//!   (`snapshot::IdleReaper`) within seconds if a long request keeps that
//!   version alive.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use wasmtime::Store;

use super::bindings::Filter;
use super::breaker::Admission;
use super::host::{FilterHost, InstanceTag};
use super::runtime::{FilterRuntime, InstanceCount};

/// Requests one instance serves before it is retired (nginx's
/// `keepalive_requests` and php-fpm's `max_requests` bound reuse likewise).
pub const MAX_REQUESTS_PER_INSTANCE: u32 = 1_000;

/// Idle instances one chain entry keeps: enough for the requests a worker
/// has in flight at once on one route.
pub const MAX_IDLE_PER_LINK: usize = 128;

/// One filter instance and its store.
pub struct Instance {
    pub store: Store<FilterHost>,
    pub filter: Filter,
    /// Requests this instance has finished.
    pub served: u32,
    /// Its linear memory when it was made: what its module starts with.
    pub memory_at_start: usize,
    /// How the breaker let the current request run the filter, for its
    /// result to be recorded as.
    pub admission: Admission,
}

/// An instance waiting for its next request.
struct Parked {
    instance: Instance,
    _counted_idle: InstanceCount,
    since: Instant,
}

/// A chain entry's idle instances, most recently used last, so the oldest
/// parked come first.
#[derive(Default)]
pub struct IdleInstances {
    parked: Mutex<Vec<Parked>>,
}

impl std::fmt::Debug for IdleInstances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleInstances").field("parked", &self.len()).finish()
    }
}

impl IdleInstances {
    /// The most recently parked instance (its pages are the likeliest to be
    /// in cache), made live again and tagged for the request it now serves.
    pub fn take(&self, runtime: &FilterRuntime, tag: InstanceTag) -> Option<Instance> {
        let Parked { mut instance, .. } = self.parked.lock().unwrap_or_else(PoisonError::into_inner).pop()?;
        let host = instance.store.data_mut();
        host.serve(tag);
        host.live = Some(runtime.instance_opened());
        Some(instance)
    }

    /// Park `instance`, which has just finished a request cleanly, unless it
    /// is due for retirement or there is no room; then it is dropped here.
    pub fn park(&self, runtime: &FilterRuntime, mut instance: Instance, memory_cap: u64) {
        instance.served += 1;
        let host = instance.store.data_mut();
        // Grown into more than half the room it started with: a component
        // that starts near its cap (CPython's 12.4 MiB, under 16) is still
        // reused, and a leak is caught before it meets the cap, as long as
        // one request grows it by less than the other half. (A memory's own
        // declared maximum below the cap is not counted here.)
        let start = instance.memory_at_start as u64;
        let grown = host.limiter.memory_in_use as u64 > start + memory_cap.saturating_sub(start) / 2;
        if instance.served >= MAX_REQUESTS_PER_INSTANCE || grown {
            return;
        }
        let Some(counted_idle) = runtime.instance_parked() else { return };
        host.live = None;
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        if parked.len() < MAX_IDLE_PER_LINK {
            parked.push(Parked { instance, _counted_idle: counted_idle, since: Instant::now() });
            return;
        }
        // Full: drop the instance after the lock, since a drop resets its memory.
        drop(parked);
    }

    /// Drop the instances parked before `cutoff`; returns how many.
    pub fn expire(&self, cutoff: Instant) -> usize {
        let expired: Vec<Parked> = {
            let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
            let stale = parked.iter().take_while(|p| p.since < cutoff).count();
            parked.drain(..stale).collect()
        };
        // Dropped here, after the lock: each drop resets an instance's memory.
        expired.len()
    }

    pub fn len(&self) -> usize {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
