//! The control plane: every change to what serves (upload, rollback,
//! delete, config reload) goes through here, one at a time.
//!
//! A change is built and checked in full first: the component is validated
//! and compiled, and every route's chain is rebuilt and asks its filters to
//! check their config. Only then is the store updated and the new snapshot
//! swapped in. A request in flight keeps the snapshot it started with, and an
//! old module version is freed when the last request holding it ends.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::{Value, json};

use crate::cache::EdgeCache;
use crate::config::{self, Config};
use crate::filters::chain::ChainError;
use crate::filters::store::{StoreState, StoredModule, sha256_hex};
use crate::filters::{Capabilities, FilterModule, FilterRuntime, ModuleError, ModuleRegistry, ModuleStore};
use crate::metrics::Metrics;
use crate::snapshot::{ReplacedSnapshots, Snapshot, SnapshotError};
use crate::upstream::Upstreams;

/// Why a change was refused. Nothing changed in any case.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("no module named {0:?}")]
    NoSuchModule(String),
    #[error("module {name:?} is used by routes {routes:?}; remove it from them first")]
    InUse { name: String, routes: Vec<String> },
    #[error("module {0:?} has no earlier version to roll back to")]
    NoEarlierVersion(String),
    #[error("module store: {0}")]
    Store(#[from] io::Error),
    #[error("the compile was cut short: {0}")]
    CompileTask(String),
    #[error("admin token: {0}; the admin API keeps the token it has")]
    AdminToken(String),
}

impl ControlError {
    /// The HTTP status an admin client gets for this error.
    pub fn status(&self) -> u16 {
        match self {
            // The change may be fine: there was no instance slot to check it.
            Self::Snapshot(SnapshotError::Chain(ChainError::NoFreeSlot { .. })) => 503,
            Self::Module(_) | Self::Snapshot(_) | Self::AdminToken(_) => 400,
            Self::NoSuchModule(_) => 404,
            Self::InUse { .. } | Self::NoEarlierVersion(_) => 409,
            Self::Store(_) | Self::CompileTask(_) => 500,
        }
    }
}

/// One chain entry's breaker, for `GET /modules` and the metrics.
pub struct BreakerReport {
    pub route: String,
    /// The entry's place in its route's chain, from 0: a chain may run the
    /// same module twice (two rate limits, say).
    pub position: usize,
    pub module: String,
    pub state: crate::filters::breaker::BreakerState,
    pub opened: u64,
}

pub struct ControlPlane {
    pub runtime: Arc<FilterRuntime>,
    pub current: Arc<ArcSwap<Snapshot>>,
    /// Snapshots swapped out, for the idle-instance reaper.
    pub replaced: Arc<ReplacedSnapshots>,
    pub metrics: Arc<Metrics>,
    /// The edge cache; sized at start, it lives as long as the process.
    pub cache: &'static EdgeCache,
    config_path: PathBuf,
    store: ModuleStore,
    changes: tokio::sync::Mutex<()>,
    /// The admin API's token while it serves; a reload reads it again, so a
    /// rotated token file takes effect without a restart.
    admin_token: arc_swap::ArcSwapOption<Vec<u8>>,
    /// The config the process started with: what its listeners, threads,
    /// pool and cache were made from, whatever reloads came since.
    started: Config,
}

/// The keys whose change from the config the process `started` with a
/// reload cannot apply: listeners, threads and the engine, cache and store
/// sized or opened at start. TLS certificates are read at start too: a
/// reload with TLS on always names them, since their files may have changed
/// under the same names.
fn restart_needed(started: &Config, loaded: &Config) -> Vec<&'static str> {
    let (old, new) = (started, loaded);
    let changed = [
        ("server.listen", old.server.listen != new.server.listen),
        ("server.threads", old.server.threads != new.server.threads),
        ("server.shutdown_grace_secs", old.server.shutdown_grace != new.server.shutdown_grace),
        ("server.tls", old.server.tls != new.server.tls || new.server.tls.is_some()),
        ("admin.listen", old.admin.listen != new.admin.listen),
        ("admin.max_upload_mb", old.admin.max_body_bytes != new.admin.max_body_bytes),
        ("modules.store", old.modules.store != new.modules.store),
        ("limits.max_instances", old.limits.max_instances != new.limits.max_instances),
        ("limits.filter_memory_mb", old.limits.filter_memory_bytes != new.limits.filter_memory_bytes),
        ("cache", old.cache != new.cache),
    ];
    changed.into_iter().filter(|(_, changed)| *changed).map(|(key, _)| key).collect()
}

/// Every module: the modules directory (less the files deleted through the
/// admin API), then the active uploaded versions, which win over a file of
/// the same name.
fn load_modules(
    runtime: &FilterRuntime,
    config: &Config,
    store: &ModuleStore,
    serving: Option<&ModuleRegistry>,
) -> Result<ModuleRegistry, ControlError> {
    let state = store.state()?;
    let mut registry = ModuleRegistry::load_dir(runtime, &config.modules.dir, Some(store), &state.deleted)?;
    for (name, stored) in state.modules {
        // On a reload, the active version already serving is kept as it is,
        // whatever became of its file since.
        if let Some(module) = serving.and_then(|s| s.get(&name)).filter(|m| m.sha256 == stored.active) {
            registry.insert_shared(module.clone());
            continue;
        }
        // The active version; if its file is lost or damaged, the newest
        // earlier one that loads, then the modules directory's file: one bad
        // file on disk must not keep the proxy from serving.
        let earlier = stored.history.iter().rev().filter(|sha| **sha != stored.active);
        let mut first_error = None;
        for sha in std::iter::once(&stored.active).chain(earlier) {
            match load_version(runtime, store, &name, sha) {
                Ok(module) => {
                    if first_error.take().is_some() {
                        log::error!("module {name:?}: serving the earlier version {sha} instead");
                    }
                    registry.insert(module);
                    break;
                }
                Err(e) => {
                    log::error!("module {name:?}: version {sha} cannot be loaded: {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => {}
            Some(_) if registry.get(&name).is_some() => {
                log::error!("module {name:?}: no stored version loads; serving the modules directory's file")
            }
            // Left out: a route that names it is refused with that said.
            Some(_) => log::error!("module {name:?}: no version loads; it is left out"),
        }
    }
    Ok(registry)
}

/// Run `work` (a compile) on the blocking pool, not on the calling thread:
/// the admin API has one, and a large component takes seconds to compile,
/// which health checks and metrics must not wait behind.
/// How long the compiled artifacts of another engine (a Wasmtime build and
/// its settings) are kept after it last started: a rollback of the binary
/// or of a setting within that time compiles nothing.
const ARTIFACTS_KEPT_UNUSED: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

async fn on_blocking_pool<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ControlError::CompileTask(e.to_string()))?
}

/// The sha256 of each file of modules directory `dir` a start loads: all
/// but those of modules `deleted`.
fn shipped_shas(dir: &Path, deleted: &BTreeSet<String>) -> BTreeSet<String> {
    let files = match ModuleRegistry::dir_files(dir) {
        Ok(files) => files,
        Err(e) => {
            log::warn!("module store: cannot tell which artifacts the modules directory needs: {e}");
            return BTreeSet::new();
        }
    };
    let loaded = files.into_iter().filter(|(name, _)| !deleted.contains(name));
    loaded.filter_map(|(_, path)| std::fs::read(path).ok()).map(|bytes| sha256_hex(&bytes)).collect()
}

/// Version `sha` of module `name` from the store, compiled (or from its
/// cached artifact); refused if its bytes are not the ones stored.
fn load_version(
    runtime: &FilterRuntime,
    store: &ModuleStore,
    name: &str,
    sha: &str,
) -> Result<FilterModule, ControlError> {
    let bytes = store.read_version(sha)?;
    let path = store.version_path(sha);
    if sha256_hex(&bytes) != sha {
        let message = format!("{}: damaged (its sha256 is not {sha})", path.display());
        return Err(ControlError::Store(io::Error::new(io::ErrorKind::InvalidData, message)));
    }
    Ok(FilterModule::compile(runtime, name, &bytes, Some(store)).map_err(|e| e.in_file(&path))?)
}

/// A snapshot of `config` and everything it names: modules (from the
/// directory and the store), capabilities and upstream groups. `previous` is
/// the snapshot serving until now, on a reload: unchanged rate-limit policies
/// and health-checked servers carry their state over.
async fn snapshot_of(
    runtime: &Arc<FilterRuntime>,
    config: Config,
    store: &ModuleStore,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, ControlError> {
    // A reload that finds a new or changed module compiles it.
    let modules = {
        let (runtime, config, store) = (runtime.clone(), config.clone(), store.clone());
        let serving = previous.map(|p| p.modules.clone());
        on_blocking_pool(move || load_modules(&runtime, &config, &store, serving.as_deref())).await?
    };
    let caps = Arc::new(Capabilities::build(&config, previous.map(|p| p.caps.as_ref())).map_err(SnapshotError::from)?);
    let upstreams = Upstreams::start(&config.upstreams, previous.map(|p| p.upstreams.as_ref()));
    Ok(Snapshot::build(config, upstreams, Arc::new(modules), caps, runtime, previous).await?)
}

impl ControlPlane {
    /// Load the config at `path` and everything it names, ready to serve.
    pub async fn start(path: &Path, runtime: Arc<FilterRuntime>, config: Config) -> Result<Self, ControlError> {
        let store = ModuleStore::open(&config.modules.store, runtime.engine())?;
        let cache = EdgeCache::new(&config.cache);
        let started = config.clone();
        let snapshot = snapshot_of(&runtime, config, &store, None).await?;
        runtime.fit_tick_to(snapshot.shortest_filter_timeout());
        Ok(Self {
            runtime,
            current: Arc::new(ArcSwap::from_pointee(snapshot)),
            replaced: Arc::default(),
            metrics: Arc::default(),
            cache,
            config_path: path.to_path_buf(),
            store,
            changes: tokio::sync::Mutex::new(()),
            admin_token: Default::default(),
            started,
        })
    }

    /// Bring the store in line with the config `serve` starts with: forget
    /// versions past `modules.keep_versions`, and remove the artifacts of
    /// engines unused for a month. Not part of `start`: `cascade check`
    /// must change nothing, and a start that stops (a busy port) neither.
    pub async fn tidy_store(&self) {
        self.apply_retention().await;
        self.store.remove_unused_artifacts(ARTIFACTS_KEPT_UNUSED);
    }

    /// Forget, for every stored module, the versions past
    /// `modules.keep_versions` as configured now: a lowered setting takes
    /// effect at the start or reload that brings it, not at each module's
    /// next upload. A store that cannot be read or written is logged; the
    /// versions then stay until the next try.
    async fn apply_retention(&self) {
        let snapshot = self.current.load_full();
        let keep = snapshot.config.modules.keep_versions;
        let mut state = match self.store.state() {
            Ok(state) => state,
            Err(e) => return log::warn!("module store: cannot apply modules.keep_versions: {e}"),
        };
        let mut forgotten = Vec::new();
        for (name, entry) in &mut state.modules {
            let serving = snapshot.modules.get(name).map(|m| m.sha256.as_str());
            // After a fallback at start (the active version does not load)
            // the version serving is kept too, whatever the setting: it is
            // the one the next start can fall back to.
            let keep = if serving.is_some_and(|s| s != entry.active) { keep.max(2) } else { keep };
            let gone = entry.retain_recent(keep, serving);
            if !gone.is_empty() {
                forgotten.push((name.clone(), gone));
            }
        }
        if forgotten.is_empty() {
            return;
        }
        if let Err(e) = self.store.save_state(&state) {
            return log::warn!("module store: cannot apply modules.keep_versions: {e}");
        }
        for (name, gone) in forgotten {
            self.remove_files(&name, gone, &state, &snapshot.modules).await;
        }
    }

    /// Build (and check) a snapshot with the current config and capabilities
    /// and the current modules changed by `edit`. Rate-limit state survives,
    /// because the capabilities are shared. Nothing is swapped yet.
    async fn build_with(&self, edit: impl FnOnce(&mut ModuleRegistry)) -> Result<Snapshot, ControlError> {
        let current = self.current.load_full();
        let mut registry = (*current.modules).clone();
        edit(&mut registry);
        let config = (*current.config).clone();
        let upstreams = current.upstreams.clone();
        let caps = current.caps.clone();
        Ok(Snapshot::build(config, upstreams, Arc::new(registry), caps, &self.runtime, Some(&current)).await?)
    }

    /// Make `snapshot` the one new requests see.
    fn activate(&self, snapshot: Snapshot) {
        self.serve(snapshot);
        self.metrics.record_swap();
    }

    fn serve(&self, snapshot: Snapshot) {
        self.runtime.fit_tick_to(snapshot.shortest_filter_timeout());
        let serving_upstreams = snapshot.upstreams.clone();
        let replaced = self.current.swap(Arc::new(snapshot));
        replaced.upstreams.retire_replaced(&serving_upstreams);
        self.replaced.record(&replaced);
    }

    // Each change below builds and checks the new snapshot first, then
    // records it in the store, then swaps: a refused change leaves no trace,
    // and the store never names a version that is not serving.

    /// Validate, compile and activate `bytes` as the new version of `name`.
    pub async fn upload(&self, name: &str, bytes: &[u8]) -> Result<Value, ControlError> {
        let _one_change_at_a_time = self.changes.lock().await;
        let module = self.compile(name, bytes).await?;
        let sha = module.sha256.clone();
        let snapshot = self.build_with(|modules| modules.insert(module)).await?;
        self.store.put_version(bytes)?;
        let mut state = self.store.state()?;
        // An upload brings back a module of the modules directory that was
        // deleted; its file is no version to roll back to then.
        let was_deleted = state.deleted.remove(name);
        let entry = state.modules.entry(name.to_string()).or_insert_with(StoredModule::default);
        // The first upload over a module of the modules directory keeps that
        // file's version as the one a rollback goes back to.
        if entry.history.is_empty()
            && !was_deleted
            && let Some(shipped) = self.keep_shipped_version(name)
        {
            entry.versions.push(shipped.clone());
            entry.history.push(shipped);
        }
        if !entry.versions.contains(&sha) {
            entry.versions.push(sha.clone());
        }
        // Uploading the active version again (a retried deploy) is no new
        // step: rollback must still go to the version before it.
        if entry.history.last() != Some(&sha) {
            entry.history.push(sha.clone());
        }
        entry.active = sha;
        let serving = self.serving_sha(name);
        let forgotten = entry.retain_recent(snapshot.config.modules.keep_versions, serving.as_deref());
        self.store.save_state(&state)?;
        self.remove_files(name, forgotten, &state, &snapshot.modules).await;
        self.activate(snapshot);
        Ok(self.module_json(name).unwrap_or(Value::Null))
    }

    /// Remove the files of versions of `name` the store no longer records,
    /// but for bytes another module keeps or `serving` serves (the same
    /// bytes under two names). The bytes of a modules directory's file keep
    /// their compiled artifact: every start loads that file (an upload may
    /// override it after), from the artifact. A file that cannot be removed
    /// is logged: the change is made either way.
    async fn remove_files(&self, name: &str, versions: Vec<String>, state: &StoreState, serving: &ModuleRegistry) {
        let mut kept: BTreeSet<&str> = serving.modules().map(|m| m.sha256.as_str()).collect();
        kept.extend(state.modules.values().flat_map(|m| &m.versions).map(String::as_str));
        let gone: Vec<String> = versions.into_iter().filter(|sha| !kept.contains(sha.as_str())).collect();
        if gone.is_empty() {
            return;
        }
        let (store, name, deleted) = (self.store.clone(), name.to_string(), state.deleted.clone());
        let dir = self.current.load().config.modules.dir.clone();
        // Reading and hashing the modules directory is disk work: off the
        // admin API's one thread, as compiles are.
        let removed = on_blocking_pool(move || {
            let shipped = shipped_shas(&dir, &deleted);
            for sha in gone {
                let mut removed = store.remove_version(&sha);
                if !shipped.contains(&sha) {
                    removed = removed.and(store.remove_artifact(&sha));
                }
                if let Err(e) = removed {
                    log::warn!("module {name:?}: version {sha} is gone from the store but a file of it stays: {e}");
                }
            }
            Ok(())
        });
        if let Err(e) = removed.await {
            log::warn!("module store: files of forgotten versions stay: {e}");
        }
    }

    /// Load stored version `sha` of `name` (its bytes checked against it).
    async fn load_stored(&self, name: &str, sha: &str) -> Result<FilterModule, ControlError> {
        let (runtime, store) = (self.runtime.clone(), self.store.clone());
        let (name, sha) = (name.to_string(), sha.to_string());
        on_blocking_pool(move || load_version(&runtime, &store, &name, &sha)).await
    }

    /// The sha256 of the version of `name` serving now.
    fn serving_sha(&self, name: &str) -> Option<String> {
        self.current.load().modules.get(name).map(|m| m.sha256.clone())
    }

    /// Compile `bytes` as module `name` on the blocking pool, not on the
    /// admin API's one thread: a large component takes seconds, and health
    /// checks and metrics must not wait behind it.
    async fn compile(&self, name: &str, bytes: &[u8]) -> Result<FilterModule, ControlError> {
        let (runtime, store) = (self.runtime.clone(), self.store.clone());
        let (name, bytes) = (name.to_string(), bytes.to_vec());
        on_blocking_pool(move || Ok(FilterModule::compile(&runtime, &name, &bytes, Some(&store))?)).await
    }

    /// Keep the modules directory's file of `name`, if there is one and it
    /// is the version serving, as a version in the store; its sha256. A file
    /// changed since it was loaded never served, so it is no version to go
    /// back to. A file that cannot be read is only logged: the upload goes on
    /// without a version to roll back to.
    fn keep_shipped_version(&self, name: &str) -> Option<String> {
        let path = self.shipped_file(name);
        let cannot_keep =
            |e: io::Error| log::warn!("module {name:?}: cannot keep {} to roll back to: {e}", path.display());
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                cannot_keep(e);
                return None;
            }
        };
        if self.serving_sha(name).as_deref() != Some(sha256_hex(&bytes).as_str()) {
            log::warn!("module {name:?}: {} changed since it was loaded: no version to roll back to", path.display());
            return None;
        }
        self.store.put_version(&bytes).map_err(cannot_keep).ok()
    }

    /// Where the modules directory keeps module `name`, if it ships one.
    fn shipped_file(&self, name: &str) -> PathBuf {
        self.current.load().config.modules.dir.join(format!("{name}.wasm"))
    }

    /// Make the previously active version of `name` active again.
    pub async fn rollback(&self, name: &str) -> Result<Value, ControlError> {
        let _one_change_at_a_time = self.changes.lock().await;
        let mut state = self.store.state()?;
        let Some(entry) = state.modules.get_mut(name) else {
            // A module of the modules directory that was never uploaded over
            // exists, but has no earlier version.
            return Err(match self.current.load().modules.get(name) {
                Some(_) => ControlError::NoEarlierVersion(name.to_string()),
                None => ControlError::NoSuchModule(name.to_string()),
            });
        };
        // Back from the version serving, which after a fallback at start
        // (a damaged file) is not the last in the history; a version that no
        // longer loads is passed over.
        let serving = self.serving_sha(name);
        let at = serving.and_then(|s| entry.history.iter().rposition(|h| *h == s)).unwrap_or(entry.history.len());
        let mut earlier = entry.history[..at].iter().rev().cloned().collect::<Vec<_>>().into_iter();
        let (previous, module) = loop {
            let Some(previous) = earlier.next() else {
                return Err(ControlError::NoEarlierVersion(name.to_string()));
            };
            match self.load_stored(name, &previous).await {
                Ok(module) => break (previous, module),
                Err(e) => log::error!("module {name:?}: rollback passes over version {previous}: {e}"),
            }
        };
        let snapshot = self.build_with(|modules| modules.insert(module)).await?;
        // `previous` stays last; what came after it (the versions passed
        // over too) is undone. Before it are what `earlier` has not taken.
        entry.history.truncate(earlier.len() + 1);
        entry.active = previous;
        self.store.save_state(&state)?;
        self.activate(snapshot);
        Ok(self.module_json(name).unwrap_or(Value::Null))
    }

    /// Remove a module that no route uses. A module of the modules directory
    /// stays deleted across reloads and restarts, though its file is still
    /// there: the store records it, as it records uploads over such files.
    pub async fn delete(&self, name: &str) -> Result<(), ControlError> {
        let _one_change_at_a_time = self.changes.lock().await;
        let routes = self.routes_using(name);
        if !routes.is_empty() {
            return Err(ControlError::InUse { name: name.to_string(), routes });
        }
        if self.current.load().modules.get(name).is_none() {
            return Err(ControlError::NoSuchModule(name.to_string()));
        }
        let snapshot = self.build_with(|modules| modules.remove(name)).await?;
        let mut state = self.store.state()?;
        let uploaded = state.modules.remove(name);
        let shipped = self.shipped_file(name).exists();
        let newly_deleted = shipped && state.deleted.insert(name.to_string());
        if uploaded.is_some() || newly_deleted {
            self.store.save_state(&state)?;
        }
        // Its stored versions and artifacts go too, the modules directory's
        // file's among them: a module is often deleted because of what it
        // holds.
        let mut gone = uploaded.map(|uploaded| uploaded.versions).unwrap_or_default();
        if newly_deleted && let Ok(bytes) = std::fs::read(self.shipped_file(name)) {
            gone.push(sha256_hex(&bytes));
        }
        self.remove_files(name, gone, &state, &snapshot.modules).await;
        self.activate(snapshot);
        Ok(())
    }

    /// Reload the config files, modules and the admin token; on any error
    /// the old snapshot and token keep serving. The answer lists the keys
    /// that changed but only take effect at a restart.
    pub async fn reload(&self) -> Result<Vec<&'static str>, ControlError> {
        let _one_change_at_a_time = self.changes.lock().await;
        // Loading resolves upstream names, which may wait on a nameserver:
        // off the admin API's one thread.
        let path = self.config_path.clone();
        let serving = self.current.load().upstreams.clone();
        let config = on_blocking_pool(move || {
            let last_answer = |host: &str, port| serving.last_answer(host, port);
            Ok(config::load_knowing(&path, &last_answer).map_err(SnapshotError::from)?)
        })
        .await?;
        let restart_needed = restart_needed(&self.started, &config);
        let token = match self.admin_token() {
            Some(_) => Some(crate::admin::read_token(&config.admin).map_err(ControlError::AdminToken)?),
            None => None,
        };
        let previous = self.current.load_full();
        let snapshot = snapshot_of(&self.runtime, config, &self.store, Some(&previous)).await?;
        self.serve(snapshot);
        self.apply_retention().await;
        if let Some(token) = token {
            self.set_admin_token(token);
        }
        self.metrics.record_reload();
        if !restart_needed.is_empty() {
            log::warn!("config reload: changes to {} take effect only at a restart", restart_needed.join(", "));
        }
        Ok(restart_needed)
    }

    /// The admin API's token, while it serves.
    pub fn admin_token(&self) -> Option<Arc<Vec<u8>>> {
        self.admin_token.load_full()
    }

    pub fn set_admin_token(&self, token: Vec<u8>) {
        self.admin_token.store(Some(Arc::new(token)));
    }

    fn routes_using(&self, name: &str) -> Vec<String> {
        let current = self.current.load();
        current
            .routes
            .routes()
            .iter()
            .filter(|r| r.config.filters.iter().any(|f| f.module == name))
            .map(|r| r.config.name.clone())
            .collect()
    }

    /// One module: its active version, every version, and the routes using it.
    pub fn module_json(&self, name: &str) -> Option<Value> {
        let current = self.current.load();
        let module = current.modules.get(name)?;
        let stored = self.store.state().ok().and_then(|s| s.modules.get(name).cloned());
        let versions: Vec<Value> = match &stored {
            Some(stored) => {
                stored.versions.iter().map(|sha| json!({ "sha256": sha, "active": *sha == module.sha256 })).collect()
            }
            None => vec![json!({ "sha256": module.sha256, "active": true })],
        };
        Some(json!({
            "name": name,
            "source": if stored.is_some() { "upload" } else { "modules.dir" },
            "active": {
                "sha256": module.sha256,
                "size": module.size,
                "compile_ms": module.compile_time.as_secs_f64() * 1000.0,
                "from_cache": !module.compiled,
            },
            "versions": versions,
            "routes": self.routes_using(name),
            "breakers": self.breakers().into_iter().filter(|b| b.module == name).map(|b| json!({
                "route": b.route,
                "position": b.position,
                "state": b.state.as_str(),
                "opened_total": b.opened,
            })).collect::<Vec<_>>(),
        }))
    }

    /// Every chain entry's circuit breaker, route by route.
    /// The Prometheus text exposition of everything serving now.
    pub fn render_metrics(&self) -> String {
        let current = self.current.load();
        self.metrics.render(&self.runtime, self.cache, &self.breakers(), &current.upstreams, &current.caps)
    }

    pub fn breakers(&self) -> Vec<BreakerReport> {
        let current = self.current.load();
        let mut reports = Vec::new();
        for route in current.routes.routes() {
            for (position, link) in route.chain.links.iter().enumerate() {
                reports.push(BreakerReport {
                    route: route.name.to_string(),
                    position,
                    module: link.entry.module.clone(),
                    state: link.breaker.state(),
                    opened: link.breaker.opened(),
                });
            }
        }
        reports
    }

    pub fn modules_json(&self) -> Value {
        let names: Vec<String> = self.current.load().modules.names().map(str::to_string).collect();
        Value::Array(names.iter().filter_map(|n| self.module_json(n)).collect())
    }

    pub fn routes_json(&self) -> Value {
        let current = self.current.load();
        Value::Array(
            current
                .routes
                .routes()
                .iter()
                .map(|r| {
                    let c = &r.config;
                    json!({
                        "name": c.name,
                        "host": c.host.to_string(),
                        "path_prefix": c.path_prefix,
                        "upstream": c.upstream,
                        "filters": c.filters.iter().map(|f| json!({
                            "module": f.module,
                            "on_error": match f.on_error { config::OnError::FailClosed => "fail-closed", config::OnError::FailOpen => "fail-open" },
                        })).collect::<Vec<_>>(),
                        "declared_at": format!("{}:{}", c.at.file.display(), c.at.line),
                    })
                })
                .collect(),
        )
    }
}
