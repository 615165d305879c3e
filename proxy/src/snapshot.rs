//! One consistent version of everything a request reads: routes with their
//! resolved filter chains, upstream groups and modules.
//!
//! The proxy keeps the current snapshot behind `arc-swap`. A request loads it
//! once, at its start, and keeps that version through both phases, so a swap
//! never mixes versions within one request.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{Config, ConfigError};
use crate::filters::Capabilities;
use crate::filters::capabilities::CapabilityError;
use crate::filters::chain::ChainError;
use crate::filters::{FilterChain, FilterRuntime, ModuleError, ModuleRegistry};
use crate::route::{DuplicateRoute, Route, RouteTable};
use crate::upstream::Upstreams;

/// Why a configuration could not be made live.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Route(#[from] Box<DuplicateRoute>),
    #[error(transparent)]
    Capability(#[from] Box<CapabilityError>),
}

pub struct Snapshot {
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub upstreams: Arc<Upstreams>,
    pub modules: Arc<ModuleRegistry>,
    pub caps: Arc<Capabilities>,
}

impl Snapshot {
    /// Assemble a snapshot from a loaded config, module set and host
    /// capabilities, checking every route's chain, including each filter's
    /// own check of its config. `upstreams` is passed in so that a module
    /// change keeps the health state the checkers have learnt, and
    /// `previous` (the snapshot being replaced) so that unchanged chain
    /// entries keep their circuit breakers.
    pub async fn build(
        config: Config,
        upstreams: Arc<Upstreams>,
        modules: Arc<ModuleRegistry>,
        caps: Arc<Capabilities>,
        runtime: &FilterRuntime,
        previous: Option<&Snapshot>,
    ) -> Result<Self, SnapshotError> {
        let chains_before: HashMap<&str, &FilterChain> = previous
            .map(|p| p.routes.routes().iter().map(|r| (r.config.name.as_str(), &r.chain)).collect())
            .unwrap_or_default();
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let before = chains_before.get(route.name.as_str()).copied();
            let chain = FilterChain::build(runtime, &modules, &caps, &route.name, &route.filters, before).await?;
            routes.push(Route::new(route.clone(), chain));
        }
        Ok(Self { routes: RouteTable::build(routes)?, upstreams, modules, caps, config: Arc::new(config) })
    }

    /// The shortest deadline of any filter this config runs (the default
    /// deadline if it runs none): the epoch tick is fitted to it.
    pub fn shortest_filter_timeout(&self) -> std::time::Duration {
        let entries = self.config.routes.iter().flat_map(|route| &route.filters);
        entries.map(|entry| entry.limits.timeout).min().unwrap_or(self.config.limits.filter_timeout)
    }

    /// Drop the instances parked for reuse before `cutoff`; how many.
    pub fn expire_idle_instances(&self, cutoff: Instant) -> usize {
        self.routes.routes().iter().map(|route| route.chain.expire_idle(cutoff)).sum()
    }
}

/// Snapshots swapped out while requests still hold them, recorded at the
/// swap (not when the reaper next looks: two swaps may come between).
#[derive(Default)]
pub struct ReplacedSnapshots(std::sync::Mutex<Vec<Weak<Snapshot>>>);

impl ReplacedSnapshots {
    pub fn record(&self, old: &Arc<Snapshot>) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Arc::downgrade(old));
    }

    /// Empty the idle lists of those still held, and forget those gone.
    fn expire_idle_instances(&self, now: Instant) {
        let held: Vec<Arc<Snapshot>> = {
            let mut replaced = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            replaced.retain(|old| old.strong_count() > 0);
            replaced.iter().filter_map(Weak::upgrade).collect()
        };
        // After the lock: each drop resets an instance's memory, and the
        // last reference to a snapshot may go here.
        for old in held {
            old.expire_idle_instances(now);
        }
    }
}

/// Drops idle filter instances, whether or not requests come: the current
/// snapshot's once they are past `limits.idle_instance_timeout_secs` (a
/// route that had a burst and then none would otherwise hold the burst's
/// slots and memory), and at once those of a replaced snapshot that a long
/// request (a download, a WebSocket) still holds: no new request uses them.
pub struct IdleReaper {
    pub current: Arc<ArcSwap<Snapshot>>,
    pub replaced: Arc<ReplacedSnapshots>,
}

#[async_trait::async_trait]
impl BackgroundService for IdleReaper {
    async fn start(&self, shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            // Read each time: a reload may change the timeout. An instance
            // goes within a quarter of it (5 s at most) after it is due.
            let timeout = self.current.load().config.limits.idle_instance_timeout;
            tokio::time::sleep((timeout / 4).min(Duration::from_secs(5))).await;
            let now = Instant::now();
            self.replaced.expire_idle_instances(now);
            let current = self.current.load_full();
            let expired = now.checked_sub(timeout).map_or(0, |cutoff| current.expire_idle_instances(cutoff));
            if expired > 0 {
                log::debug!("dropped {expired} filter instances idle past {timeout:?}");
            }
        }
    }
}
