//! The module store: uploaded versions, content-addressed by sha256, the
//! record of which version of each module is active, and the cache of
//! precompiled artifacts.
//!
//! ```text
//! <store>/versions/<sha256>.wasm          every kept version, immutable
//! <store>/state.json                      per module: version history, active version
//! <store>/compiled/<engine>/<sha256>.cwasm precompiled, keyed by engine compatibility
//! ```
//!
//! Every write goes to a temporary file and is renamed into place, so a
//! crash never leaves a half-written version, artifact or state.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What the store remembers about one uploaded module.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredModule {
    /// The versions kept (`modules.keep_versions`), in upload order.
    pub versions: Vec<String>,
    /// The active version; rollback walks `history` back.
    pub active: String,
    /// Versions activated, each once at its last activation, in order:
    /// what a rollback goes back through.
    #[serde(default)]
    pub history: Vec<String>,
}

impl StoredModule {
    /// Keep `keep` versions and forget the rest; returns those forgotten.
    /// Kept first are the active version, then `serving`, the version that
    /// served until now (after a fallback at start, not the one before the
    /// active version in the history), then those a rollback goes back to,
    /// newest first, then those a rollback undid, newest first. The history
    /// keeps each version once, at its last activation: a rollback never
    /// comes back to where it started, and the history is bounded too.
    pub fn retain_recent(&mut self, keep: usize, serving: Option<&str>) -> Vec<String> {
        let serving = serving.and_then(|serving| self.versions.iter().find(|sha| *sha == serving));
        let by_recency = std::iter::once(&self.active)
            .chain(serving)
            .chain(self.history.iter().rev())
            .chain(self.versions.iter().rev());
        let mut kept: BTreeSet<&String> = BTreeSet::new();
        for sha in by_recency {
            if kept.len() == keep {
                break;
            }
            kept.insert(sha);
        }
        let kept: BTreeSet<String> = kept.into_iter().cloned().collect();
        let (stay, forgotten) = std::mem::take(&mut self.versions).into_iter().partition(|sha| kept.contains(sha));
        self.versions = stay;
        let mut placed = BTreeSet::new();
        let mut history: Vec<String> =
            self.history.drain(..).rev().filter(|sha| kept.contains(sha) && placed.insert(sha.clone())).collect();
        history.reverse();
        self.history = history;
        forgotten
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreState {
    pub modules: BTreeMap<String, StoredModule>,
    /// Modules of the modules directory deleted through the admin API. Their
    /// files are not loaded again (at a reload or a restart) until a module
    /// of that name is uploaded.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub deleted: BTreeSet<String>,
}

/// The store on disk.
#[derive(Debug, Clone)]
pub struct ModuleStore {
    root: PathBuf,
    compiled: PathBuf,
    /// A shared lock on this engine's `.in-use` file, held as long as the
    /// process runs: another engine's tidy (a newer binary started beside
    /// this one on the same store) leaves artifacts alone that a live
    /// process may load, however long ago it started.
    _in_use: Option<Arc<std::fs::File>>,
}

/// In an engine's artifacts directory: when a process of that engine last
/// started.
const LAST_START: &str = ".last-start";
/// In an engine's artifacts directory: locked (shared) by every process of
/// that engine while it runs.
const IN_USE: &str = ".in-use";

/// The hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `error`, saying which file it is about.
pub(crate) fn in_file(path: &Path, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(in_file(path, e)),
        _ => Ok(()),
    }
}

/// Write `bytes` to `path` atomically and durably: a temporary file, fsync,
/// rename, then fsync of the directory, without which the rename itself
/// may not survive a power cut (and `state.json` could name a version whose
/// file did not).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl ModuleStore {
    /// Open (creating) the store at `root` for artifacts of `engine`.
    pub fn open(root: &Path, engine: &wasmtime::Engine) -> io::Result<Self> {
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let compiled = root.join("compiled").join(format!("{:016x}", hasher.finish()));
        std::fs::create_dir_all(root.join("versions"))?;
        std::fs::create_dir_all(&compiled)?;
        let in_use = Self::hold_in_use(&compiled)
            .map_err(|e| log::warn!("cannot mark {} as in use: {e}", compiled.display()))
            .ok()
            .map(Arc::new);
        Ok(Self { root: root.to_path_buf(), compiled, _in_use: in_use })
    }

    fn hold_in_use(dir: &Path) -> io::Result<std::fs::File> {
        use std::os::unix::fs::MetadataExt;
        let path = dir.join(IN_USE);
        for _ in 0..10 {
            std::fs::create_dir_all(dir)?;
            let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
            file.lock_shared()?;
            // Another engine's tidy that held the lock while this waited
            // removed the directory: the lock is on a file no one sees.
            // Make the directory again, and lock what is there now.
            let held = file.metadata()?;
            let there = std::fs::metadata(&path).ok();
            if there.is_some_and(|now| (now.dev(), now.ino()) == (held.dev(), held.ino())) {
                return Ok(file);
            }
        }
        Err(io::Error::other(format!("{} keeps being removed", path.display())))
    }

    /// Mark this engine's artifacts as in use, and remove those of other
    /// engines not in use for `unused_for`. An engine is a Wasmtime build
    /// with its settings (`limits.filter_memory_mb` among them): after an
    /// upgrade, the old build's artifacts can never load again, and without
    /// this every upgrade left a full set on disk. Kept for a while, they
    /// serve a rollback of the binary or a setting without compiling.
    pub fn remove_unused_artifacts(&self, unused_for: Duration) {
        let marker = |dir: &Path| dir.join(LAST_START);
        if let Err(e) = std::fs::write(marker(&self.compiled), b"") {
            log::warn!("cannot mark {} as in use: {e}", self.compiled.display());
        }
        let Some(all) = self.compiled.parent() else { return };
        let Ok(entries) = std::fs::read_dir(all) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let an_engines =
                name.len() == 16 && name.to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_hexdigit()));
            if path == self.compiled || !an_engines || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let last_used = std::fs::metadata(marker(&path)).or_else(|_| entry.metadata()).and_then(|m| m.modified());
            let unused = last_used.ok().and_then(|t| t.elapsed().ok()).is_some_and(|idle| idle >= unused_for);
            if !unused {
                continue;
            }
            // Held until the directory is gone: a process of that engine
            // starting now waits for the removal.
            let in_use = std::fs::OpenOptions::new().write(true).open(path.join(IN_USE));
            if let Ok(lock) = &in_use
                && let Err(std::fs::TryLockError::WouldBlock) = lock.try_lock()
            {
                log::info!("kept the artifacts at {}: a process still runs that engine", path.display());
                continue;
            }
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    log::info!("removed the artifacts of an engine unused for {unused_for:?}: {}", path.display())
                }
                Err(e) => log::warn!("cannot remove the unused artifacts at {}: {e}", path.display()),
            }
        }
    }

    /// Keep `bytes` as a version; returns its sha256.
    pub fn put_version(&self, bytes: &[u8]) -> io::Result<String> {
        let sha = sha256_hex(bytes);
        let path = self.version_path(&sha);
        // Written unless it is there whole: uploading a version again
        // repairs a file lost or damaged on disk.
        if std::fs::read(&path).map_or(true, |kept| sha256_hex(&kept) != sha) {
            write_atomic(&path, bytes)?;
        }
        Ok(sha)
    }

    /// Remove version `sha`'s bytes, if there.
    pub fn remove_version(&self, sha: &str) -> io::Result<()> {
        remove_if_there(&self.version_path(sha))
    }

    /// Remove version `sha`'s compiled artifact, if there.
    pub fn remove_artifact(&self, sha: &str) -> io::Result<()> {
        remove_if_there(&self.artifact_path(sha))
    }

    /// The bytes of version `sha`; an error names the file.
    pub fn read_version(&self, sha: &str) -> io::Result<Vec<u8>> {
        let path = self.version_path(sha);
        std::fs::read(&path).map_err(|e| in_file(&path, e))
    }

    /// Where version `sha` is kept.
    pub fn version_path(&self, sha: &str) -> PathBuf {
        self.root.join("versions").join(format!("{sha}.wasm"))
    }

    /// Where the precompiled artifact of version `sha` lives.
    pub fn artifact_path(&self, sha: &str) -> PathBuf {
        self.compiled.join(format!("{sha}.cwasm"))
    }

    /// Which versions the store holds and which are active; an error names
    /// the file.
    pub fn state(&self) -> io::Result<StoreState> {
        let path = self.root.join("state.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| in_file(&path, io::Error::new(io::ErrorKind::InvalidData, e))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(StoreState::default()),
            Err(e) => Err(in_file(&path, e)),
        }
    }

    pub fn save_state(&self, state: &StoreState) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
        write_atomic(&self.root.join("state.json"), &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_artifacts_of_engines_unused_for_a_while_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let engine_dir = |name: &str, started_days_ago: Option<u64>| {
            let path = dir.path().join("compiled").join(name);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("a.cwasm"), b"old").unwrap();
            if let Some(days) = started_days_ago {
                let marker = std::fs::File::create(path.join(LAST_START)).unwrap();
                marker.set_modified(std::time::SystemTime::now() - Duration::from_secs(days * 86_400)).unwrap();
            }
            path
        };
        let (older, recent, no_marker) = (
            engine_dir("0123456789abcdef", Some(40)),
            engine_dir("fedcba9876543210", Some(2)),
            engine_dir("00000000000000ff", None),
        );
        // A process of an engine started 40 days ago that still runs.
        let running = engine_dir("00000000000000aa", Some(40));
        let running_process = std::fs::File::create(running.join(IN_USE)).unwrap();
        running_process.lock_shared().unwrap();
        let not_ours = dir.path().join("compiled/notes");
        std::fs::create_dir_all(&not_ours).unwrap();
        let store = ModuleStore::open(dir.path(), &wasmtime::Engine::default()).unwrap();
        assert!(older.exists(), "opening the store removed something");
        std::fs::write(store.artifact_path("kept"), b"new").unwrap();
        store.remove_unused_artifacts(Duration::from_secs(30 * 86_400));
        assert!(!older.exists(), "an engine unused for 40 days kept its artifacts");
        assert!(recent.exists() && no_marker.exists(), "artifacts of an engine used lately were removed");
        assert!(not_ours.exists(), "a directory that names no engine was removed");
        assert!(running.join("a.cwasm").exists(), "the artifacts of an engine a process still runs were removed");
        drop(running_process);
        store.remove_unused_artifacts(Duration::from_secs(30 * 86_400));
        assert!(!running.exists(), "the artifacts of an engine no process runs were kept");
        assert_eq!(std::fs::read(store.artifact_path("kept")).unwrap(), b"new");
    }

    #[test]
    fn versions_are_content_addressed_and_state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let engine = wasmtime::Engine::default();
        let store = ModuleStore::open(dir.path(), &engine).unwrap();
        let sha = store.put_version(b"abc").unwrap();
        assert_eq!(sha, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(store.put_version(b"abc").unwrap(), sha);
        assert_eq!(store.read_version(&sha).unwrap(), b"abc");
        let mut state = StoreState::default();
        state
            .modules
            .insert("m".into(), StoredModule { versions: vec![sha.clone()], active: sha.clone(), history: vec![sha] });
        store.save_state(&state).unwrap();
        assert_eq!(store.state().unwrap(), state);
        state.deleted.insert("shipped".into());
        store.save_state(&state).unwrap();
        assert_eq!(store.state().unwrap(), state);
    }

    #[test]
    fn retention_keeps_the_active_version_then_the_rollback_path() {
        let shas = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Uploads a to e; a rollback from e to d left e undone.
        let mut module = StoredModule {
            versions: shas(&["a", "b", "c", "d", "e"]),
            active: "d".into(),
            history: shas(&["a", "b", "a", "c", "d"]),
        };
        let retained = |keep: usize, serving: Option<&str>| {
            let mut module = module.clone();
            let forgotten = module.retain_recent(keep, serving);
            (forgotten, module.versions, module.history)
        };
        // Each version once in the history, at its last activation.
        assert_eq!(retained(5, None), (vec![], shas(&["a", "b", "c", "d", "e"]), shas(&["b", "a", "c", "d"])));
        assert_eq!(retained(3, None), (shas(&["b", "e"]), shas(&["a", "c", "d"]), shas(&["a", "c", "d"])));
        // The undone version goes before any rollback target does.
        assert_eq!(retained(4, None), (shas(&["e"]), shas(&["a", "b", "c", "d"]), shas(&["b", "a", "c", "d"])));
        assert_eq!(retained(1, None), (shas(&["a", "b", "c", "e"]), shas(&["d"]), shas(&["d"])));
        // The version serving until now (a fallback at start) is kept next,
        // unless it is no stored version (the modules directory's file).
        assert_eq!(retained(2, Some("a")), (shas(&["b", "c", "e"]), shas(&["a", "d"]), shas(&["a", "d"])));
        assert_eq!(retained(2, Some("z")), (shas(&["a", "b", "e"]), shas(&["c", "d"]), shas(&["c", "d"])));
        module.retain_recent(2, None);
        assert_eq!(module.active, "d");
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = ModuleStore::open(dir.path(), &wasmtime::Engine::default()).unwrap();
        let missing = store.read_version("abc").unwrap_err().to_string();
        assert!(missing.contains(&store.version_path("abc").display().to_string()), "{missing}");
        std::fs::write(dir.path().join("state.json"), b"not json").unwrap();
        let corrupt = store.state().unwrap_err().to_string();
        assert!(corrupt.contains("state.json: expected"), "{corrupt}");
    }
}
