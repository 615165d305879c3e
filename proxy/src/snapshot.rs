//! One consistent version of everything a request reads: routes with their
//! resolved filter chains, upstream groups and modules.
//!
//! The proxy keeps the current snapshot behind `arc-swap`. A request loads it
//! once, at its start, and keeps that version through both phases, so a swap
//! never mixes versions within one request.

use std::path::Path;
use std::sync::Arc;

use crate::config::{self, Config, ConfigError};
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
    /// Load the config at `path` and the modules it points to, and check
    /// every route's chain, including each filter's own config check.
    pub async fn load(path: &Path, runtime: &FilterRuntime) -> Result<Self, SnapshotError> {
        let config = config::load(path)?;
        let modules = ModuleRegistry::load_dir(runtime, &config.modules.dir)?;
        Self::build(config, Arc::new(modules), runtime).await
    }

    /// Assemble a snapshot from a loaded config and module set.
    pub async fn build(
        config: Config,
        modules: Arc<ModuleRegistry>,
        runtime: &FilterRuntime,
    ) -> Result<Self, SnapshotError> {
        let caps = Arc::new(Capabilities::build(&config)?);
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let chain = FilterChain::build(runtime, &modules, &caps, &route.name, &route.filters).await?;
            routes.push(Route::new(route.clone(), chain));
        }
        Ok(Self {
            routes: RouteTable::build(routes)?,
            upstreams: Arc::new(Upstreams::new(&config.upstreams)),
            modules,
            caps,
            config: Arc::new(config),
        })
    }
}
