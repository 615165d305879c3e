//! Small key-value stores shared by every request and filter of the process,
//! and written also through the admin API: counters, flags, deny lists.
//!
//! Memory stays bounded: at most `max_keys` keys of at most
//! [`MAX_KEY_BYTES`] each, and values of at most `max_value_bytes`. A full
//! store refuses a new key rather than drop a live one (a store may hold the
//! tokens an operator revoked); keys past their TTL go first, on the next
//! read of the key, or in a sweep when the store is full. The keys are
//! spread over [`SHARDS`] locks, so that requests on different keys do not
//! wait for each other.
//!
//! A store with a `file` is kept there across restarts: read when the
//! process first loads the store, written at once after each admin API
//! write (which answers only once it is on disk), within [`FLUSH_EVERY`]
//! after a filter's, and at shutdown.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::{KvStoreConfig, Location};
use crate::filters::store;

/// The longest key: a token id, a user or an address is far shorter.
pub const MAX_KEY_BYTES: usize = 256;
const SHARDS: usize = 16;
/// The least time between two sweeps of a full store for expired keys: a
/// full store of live keys refuses new ones at once instead of scanning
/// every key on every write.
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The longest TTL a key keeps: a longer one (up to `u64::MAX` ms from a
/// filter or a file) is this, so that no expiry overflows a clock.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 366 * 86_400);

/// When a key given `ttl` now expires.
fn expiry(now: Instant, ttl: Duration) -> Instant {
    now + ttl.min(MAX_TTL)
}

/// How long a filter's write may wait to reach a store's file.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    #[error("no key-value store named {0:?}")]
    UnknownStore(String),
    #[error("key-value store {0:?} is read-only to filters")]
    ReadOnly(String),
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("the value is longer than the store's max_value_bytes ({0})")]
    ValueTooLarge(usize),
    #[error("key-value store {0:?} is full (max_keys)")]
    StoreFull(String),
    #[error("{0}")]
    NotANumber(String),
}

#[derive(Debug)]
struct Entry {
    value: String,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

/// What a store holds; a reload hands it to the store's new config.
#[derive(Debug)]
struct Contents {
    shards: [Mutex<HashMap<String, Entry>>; SHARDS],
    /// Keys held, expired ones not yet dropped included.
    keys: AtomicUsize,
    hasher: RandomState,
    last_full_sweep: Mutex<Option<Instant>>,
    /// The file the contents were last written to (or read from); held
    /// while one is written.
    saved_to: Mutex<Option<PathBuf>>,
    /// Whether the contents changed since the file was written.
    dirty: AtomicBool,
    /// Whether the last write of the file failed (logged once, not each time).
    failing: AtomicBool,
}

impl Default for Contents {
    fn default() -> Self {
        Self {
            shards: Default::default(),
            keys: AtomicUsize::new(0),
            hasher: RandomState::new(),
            last_full_sweep: Mutex::new(None),
            saved_to: Mutex::new(None),
            dirty: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        }
    }
}

/// A store's file: each live key, with its expiry as a wall-clock time.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedStore {
    keys: BTreeMap<String, SavedEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedEntry {
    value: String,
    /// Milliseconds since the Unix epoch; `null`: never.
    expires_unix_ms: Option<u64>,
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Contents {
    fn shard_of(&self, key: &str) -> MutexGuard<'_, HashMap<String, Entry>> {
        let index = self.hasher.hash_one(key) as usize % SHARDS;
        self.shards[index].lock().expect("kv shard lock")
    }

    /// The contents of `path`, or empty when there is no such file; an
    /// error when it is not a store's file. Expired keys are left out.
    fn read(path: &Path) -> Result<Self, String> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let saved: SavedStore = serde_json::from_slice(&text)
            .map_err(|e| format!("{} is not a key-value store's file: {e}", path.display()))?;
        let contents = Self::default();
        let (now, wall) = (Instant::now(), unix_ms(SystemTime::now()));
        for (key, entry) in saved.keys {
            check_key(&key).map_err(|e| format!("{}: key {key:?}: {e}", path.display()))?;
            let expires = match entry.expires_unix_ms {
                Some(at) if at <= wall => continue,
                Some(at) => Some(expiry(now, Duration::from_millis(at - wall))),
                None => None,
            };
            contents.shard_of(&key).insert(key, Entry { value: entry.value, expires });
            contents.keys.fetch_add(1, Ordering::Relaxed);
        }
        Ok(contents)
    }

    /// Whether `path` lacks a change, or is not where the contents went.
    fn needs_saving_to(&self, path: &Path) -> bool {
        self.dirty.load(Ordering::Relaxed) || self.saved_to.lock().expect("kv file lock").as_deref() != Some(path)
    }

    /// Write the live keys to `path`.
    fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut saved_to = self.saved_to.lock().expect("kv file lock");
        // Cleared first: a write made while this one runs marks it again.
        self.dirty.store(false, Ordering::Relaxed);
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut saved = SavedStore::default();
        for shard in &self.shards {
            let shard = shard.lock().expect("kv shard lock");
            for (key, entry) in shard.iter().filter(|(_, entry)| entry.live(now)) {
                let expires_unix_ms = entry.expires.map(|at| unix_ms(wall + at.saturating_duration_since(now)));
                saved.keys.insert(key.clone(), SavedEntry { value: entry.value.clone(), expires_unix_ms });
            }
        }
        let bytes = serde_json::to_vec(&saved).expect("a store serializes");
        let written = store::write_atomic(path, &bytes).map_err(|e| store::in_file(path, e));
        match written {
            Ok(()) => *saved_to = Some(path.to_path_buf()),
            Err(_) => self.dirty.store(true, Ordering::Relaxed),
        }
        written
    }
}

/// The stores with a file, for the flusher and for shutdown, oldest first.
/// A store's contents go to the file of the newest live store that holds
/// them: the serving config's, once a reload has replaced the old one (a
/// refused reload's stores are dropped at once).
static PERSISTED: Mutex<Vec<Weak<KvStore>>> = Mutex::new(Vec::new());

/// Keep `store` in its file from now on: a thread writes every changed
/// store within [`FLUSH_EVERY`] (one thread for all of them, started by the
/// first).
fn persist(store: &Arc<KvStore>) {
    let mut persisted = PERSISTED.lock().expect("kv registry lock");
    persisted.retain(|weak| weak.strong_count() > 0);
    persisted.push(Arc::downgrade(store));
    static FLUSHER: std::sync::Once = std::sync::Once::new();
    FLUSHER.call_once(|| {
        let spawned = std::thread::Builder::new().name("cascade-kv".into()).spawn(|| {
            loop {
                std::thread::sleep(FLUSH_EVERY);
                flush_changed();
            }
        });
        if let Err(e) = spawned {
            log::error!("cannot start the key-value stores' flusher: {e}");
        }
    });
}

/// Write every store with a file whose contents changed since they were
/// last written there: every [`FLUSH_EVERY`], and at shutdown.
pub fn flush_changed() {
    let live: Vec<Arc<KvStore>> =
        PERSISTED.lock().expect("kv registry lock").iter().filter_map(Weak::upgrade).collect();
    let mut done: Vec<*const Contents> = Vec::new();
    for store in live.iter().rev() {
        let contents = &store.contents;
        if done.contains(&Arc::as_ptr(contents)) {
            continue;
        }
        done.push(Arc::as_ptr(contents));
        let Some(path) = store.config.file.as_deref().filter(|path| contents.needs_saving_to(path)) else { continue };
        match contents.save(path) {
            Ok(()) => {
                if contents.failing.swap(false, Ordering::Relaxed) {
                    log::info!("key-value store {:?}: its file is written again", store.config.name);
                }
            }
            Err(e) if !contents.failing.swap(true, Ordering::Relaxed) => {
                log::error!(
                    "key-value store {:?}: cannot write its file (trying again every second): {e}",
                    store.config.name
                )
            }
            Err(_) => {}
        }
    }
}

/// One key as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub key: String,
    pub value_bytes: usize,
    /// Time left until it expires; `None`: it never does.
    pub ttl: Option<Duration>,
}

/// One configured store.
#[derive(Debug)]
pub struct KvStore {
    pub config: KvStoreConfig,
    contents: Arc<Contents>,
}

fn check_key(key: &str) -> Result<(), KvError> {
    match key.len() {
        0 => Err(KvError::InvalidKey("the key is empty".into())),
        n if n > MAX_KEY_BYTES => Err(KvError::InvalidKey(format!("{n} bytes, more than {MAX_KEY_BYTES}"))),
        _ => Ok(()),
    }
}

impl KvStore {
    #[cfg(test)]
    pub fn new(config: KvStoreConfig) -> Self {
        Self { config, contents: Arc::default() }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.contents.shard_of(key)
    }

    /// Note a change, for the flusher.
    fn changed(&self) {
        self.contents.dirty.store(true, Ordering::Relaxed);
    }

    /// Write the contents to the store's file now, if it has one: an admin
    /// API write answers once it is on disk.
    pub fn save(&self) -> std::io::Result<()> {
        match &self.config.file {
            Some(path) => self.contents.save(path),
            None => Ok(()),
        }
    }

    /// The value of `key`, if set and not expired.
    pub fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        Ok(self.entry(key)?.map(|(value, _)| value))
    }

    /// The value of `key` and the time it has left.
    pub fn entry(&self, key: &str) -> Result<Option<(String, Option<Duration>)>, KvError> {
        check_key(key)?;
        let now = Instant::now();
        let mut shard = self.shard(key);
        match shard.get(key) {
            Some(entry) if entry.live(now) => {
                Ok(Some((entry.value.clone(), entry.expires.map(|at| at.saturating_duration_since(now)))))
            }
            Some(_) => {
                self.remove(&mut shard, key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Whether a write of `value_bytes` to `key` would be taken (the store
    /// being full aside): for writes that are checked and not made.
    pub fn check_write(&self, key: &str, value_bytes: usize) -> Result<(), KvError> {
        check_key(key)?;
        if value_bytes > self.config.max_value_bytes {
            return Err(KvError::ValueTooLarge(self.config.max_value_bytes));
        }
        Ok(())
    }

    pub fn set(&self, key: &str, value: String, ttl: Option<Duration>) -> Result<(), KvError> {
        self.check_write(key, value.len())?;
        let expires = ttl.map(|ttl| expiry(Instant::now(), ttl));
        self.upsert(key, |_| Ok(Entry { value, expires }))
    }

    /// Remove `key`; whether it was set (and live).
    pub fn delete(&self, key: &str) -> Result<bool, KvError> {
        check_key(key)?;
        let removed = self.remove(&mut self.shard(key), key);
        if removed.is_some() {
            self.changed();
        }
        Ok(removed.is_some_and(|entry| entry.live(Instant::now())))
    }

    /// Take `key` out of `shard`, and out of the count.
    fn remove(&self, shard: &mut HashMap<String, Entry>, key: &str) -> Option<Entry> {
        let removed = shard.remove(key);
        if removed.is_some() {
            self.contents.keys.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Add `delta` to the number at `key` (0 when not set, which then takes
    /// `ttl`); the sum.
    pub fn increment(&self, key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        check_key(key)?;
        // Worked out before the shard's lock is taken, as everything that
        // does not need it.
        let expires_if_new = ttl.map(|ttl| expiry(Instant::now(), ttl));
        let mut sum = 0;
        self.upsert(key, |current| {
            let value;
            (sum, value) = self.sum(key, current.map(|entry| entry.value.as_str()), delta)?;
            Ok(Entry { value, expires: current.map_or(expires_if_new, |entry| entry.expires) })
        })?;
        Ok(sum)
    }

    /// What `increment` would return, without writing.
    pub fn peek_increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        Ok(self.sum(key, self.get(key)?.as_deref(), delta)?.0)
    }

    /// `delta` added to the number `current` holds (0 when not set), and
    /// the sum as the value to store, within `max_value_bytes`.
    fn sum(&self, key: &str, current: Option<&str>, delta: i64) -> Result<(i64, String), KvError> {
        let start = current.map_or(Ok(0), |value| parse_count(key, value))?;
        let sum = start.checked_add(delta).ok_or_else(|| {
            KvError::NotANumber(format!("{start} + {delta} at key {key:?} is past a signed 64-bit number"))
        })?;
        let value = sum.to_string();
        if value.len() > self.config.max_value_bytes {
            return Err(KvError::ValueTooLarge(self.config.max_value_bytes));
        }
        Ok((sum, value))
    }

    /// Replace the live entry of `key` (or its absence) with what `next`
    /// makes of it, taking a slot for a new key.
    fn upsert(&self, key: &str, next: impl FnOnce(Option<&Entry>) -> Result<Entry, KvError>) -> Result<(), KvError> {
        let now = Instant::now();
        let mut next = Some(next);
        // Twice at most: a full store is swept (without holding this
        // shard's lock, which the sweep takes) and the write tried again.
        for attempt in 0..2 {
            let mut shard = self.shard(key);
            if let Some(entry) = shard.get_mut(key) {
                let live = entry.live(now).then_some(&*entry);
                *entry = (next.take().expect("one write"))(live)?;
                self.changed();
                return Ok(());
            }
            // Full: this shard's expired keys go first (its lock is held);
            // another thread may still take the room they leave.
            let mut has_slot = self.take_slot();
            if !has_slot && self.drop_expired(&mut shard, now) > 0 {
                has_slot = self.take_slot();
            }
            if has_slot {
                let entry = (next.take().expect("one write"))(None);
                return match entry {
                    Ok(entry) => {
                        shard.insert(key.to_string(), entry);
                        self.changed();
                        Ok(())
                    }
                    Err(e) => {
                        self.contents.keys.fetch_sub(1, Ordering::Relaxed);
                        Err(e)
                    }
                };
            }
            drop(shard);
            if attempt == 0 && !self.sweep_when_due(now) {
                break;
            }
        }
        Err(KvError::StoreFull(self.config.name.clone()))
    }

    /// Count one more key, if the store has room.
    fn take_slot(&self) -> bool {
        let max = self.config.max_keys;
        self.contents.keys.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1)).is_ok()
    }

    /// Drop every expired key, unless a sweep ran less than
    /// [`FULL_SWEEP_EVERY`] ago; whether it ran.
    fn sweep_when_due(&self, now: Instant) -> bool {
        {
            let mut last = self.contents.last_full_sweep.lock().expect("kv sweep lock");
            if last.is_some_and(|at| now.saturating_duration_since(at) < FULL_SWEEP_EVERY) {
                return false;
            }
            *last = Some(now);
        }
        for shard in &self.contents.shards {
            self.drop_expired(&mut shard.lock().expect("kv shard lock"), now);
        }
        true
    }

    /// Drop `shard`'s expired keys; how many there were.
    fn drop_expired(&self, shard: &mut HashMap<String, Entry>, now: Instant) -> usize {
        let before = shard.len();
        shard.retain(|_, entry| entry.live(now));
        let dropped = before - shard.len();
        self.contents.keys.fetch_sub(dropped, Ordering::Relaxed);
        dropped
    }

    /// The live keys starting with `prefix`, in order, at most `limit` of
    /// them; and whether there were more.
    pub fn keys(&self, prefix: &str, limit: usize) -> (Vec<KeyInfo>, bool) {
        let now = Instant::now();
        let mut found: Vec<KeyInfo> = Vec::new();
        for shard in &self.contents.shards {
            let shard = shard.lock().expect("kv shard lock");
            found.extend(shard.iter().filter(|(key, entry)| key.starts_with(prefix) && entry.live(now)).map(
                |(key, entry)| KeyInfo {
                    key: key.clone(),
                    value_bytes: entry.value.len(),
                    ttl: entry.expires.map(|at| at.saturating_duration_since(now)),
                },
            ));
        }
        found.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        let more = found.len() > limit;
        found.truncate(limit);
        (found, more)
    }

    /// Keys held, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.contents.keys.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn parse_count(key: &str, value: &str) -> Result<i64, KvError> {
    value.parse().map_err(|_| {
        let shown: String = value.chars().take(32).collect();
        KvError::NotANumber(format!("the value at key {key:?} ({shown:?}) is not a whole number"))
    })
}

/// Every configured store, by name.
#[derive(Debug, Default)]
pub struct KvStores {
    stores: BTreeMap<String, Arc<KvStore>>,
}

impl KvStores {
    /// The stores of a (re)loaded config. A store that `previous` had keeps
    /// its contents under its new bounds: a reload loses no key, and a
    /// store whose `max_keys` fell takes no new key until it is below it.
    /// A store new to the process starts from its file, if it has one (the
    /// error names a file that is not a store's); kept contents given a
    /// (new) file are written there by the flusher.
    pub fn carried_over<'a>(
        configs: impl Iterator<Item = &'a KvStoreConfig>,
        previous: Option<&KvStores>,
    ) -> Result<Self, (Location, String)> {
        let mut stores = BTreeMap::new();
        for config in configs {
            let kept = previous.and_then(|p| p.stores.get(&config.name));
            let contents = match (kept, &config.file) {
                (Some(kept), _) => kept.contents.clone(),
                (None, Some(path)) => {
                    let read = Contents::read(path).map_err(|e| (config.at.clone(), e))?;
                    *read.saved_to.lock().expect("kv file lock") = Some(path.clone());
                    Arc::new(read)
                }
                (None, None) => Arc::default(),
            };
            let store = Arc::new(KvStore { config: config.clone(), contents });
            if config.file.is_some() {
                persist(&store);
            }
            stores.insert(config.name.clone(), store);
        }
        Ok(Self { stores })
    }

    pub fn store(&self, name: &str) -> Result<&KvStore, KvError> {
        self.stores.get(name).map(Arc::as_ref).ok_or_else(|| KvError::UnknownStore(name.to_string()))
    }

    /// A store a filter writes to.
    pub fn writable(&self, name: &str) -> Result<&KvStore, KvError> {
        let store = self.store(name)?;
        match store.config.filters_may_write {
            true => Ok(store),
            false => Err(KvError::ReadOnly(name.to_string())),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &KvStore> {
        self.stores.values().map(Arc::as_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_keys: usize, filters_may_write: bool, file: Option<PathBuf>) -> KvStoreConfig {
        let at = Location { file: "cascade.toml".into(), line: 1, key: "kv_stores.s".into() };
        KvStoreConfig { name: "s".into(), max_keys, max_value_bytes: 8, filters_may_write, file, at }
    }

    fn store(max_keys: usize) -> KvStore {
        KvStore::new(config(max_keys, true, None))
    }

    #[test]
    fn set_get_delete() {
        let s = store(10);
        assert_eq!(s.get("a"), Ok(None));
        s.set("a", "one".into(), None).unwrap();
        assert_eq!(s.get("a"), Ok(Some("one".into())));
        s.set("a", "two".into(), None).unwrap();
        assert_eq!((s.get("a"), s.len()), (Ok(Some("two".into())), 1), "a set replaces");
        assert_eq!(s.delete("a"), Ok(true));
        assert_eq!((s.delete("a"), s.len()), (Ok(false), 0));
    }

    #[test]
    fn keys_and_values_are_bounded() {
        let s = store(10);
        assert!(matches!(s.get(""), Err(KvError::InvalidKey(_))));
        assert!(matches!(s.set(&"k".repeat(MAX_KEY_BYTES + 1), "v".into(), None), Err(KvError::InvalidKey(_))));
        s.set(&"k".repeat(MAX_KEY_BYTES), "v".into(), None).unwrap();
        assert_eq!(s.set("a", "123456789".into(), None), Err(KvError::ValueTooLarge(8)));
        assert_eq!(s.get("a"), Ok(None));
    }

    #[test]
    fn a_full_store_refuses_new_keys_and_keeps_the_old_ones() {
        let s = store(2);
        s.set("a", "1".into(), None).unwrap();
        s.set("b", "2".into(), None).unwrap();
        assert_eq!(s.set("c", "3".into(), None), Err(KvError::StoreFull("s".into())));
        assert_eq!(s.increment("c", 1, None), Err(KvError::StoreFull("s".into())));
        s.set("a", "changed".into(), None).unwrap();
        assert_eq!((s.get("a"), s.get("b"), s.get("c")), (Ok(Some("changed".into())), Ok(Some("2".into())), Ok(None)));
        // Room again once a key goes.
        s.delete("b").unwrap();
        s.set("c", "3".into(), None).unwrap();
    }

    #[test]
    fn expired_keys_are_gone_and_make_room() {
        let s = store(2);
        s.set("short", "1".into(), Some(Duration::from_millis(1))).unwrap();
        s.set("long", "2".into(), Some(Duration::from_secs(600))).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.get("short"), Ok(None));
        assert_eq!(s.len(), 1, "dropped when read");
        s.set("short", "1".into(), Some(Duration::from_millis(1))).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        // Full, but one key has expired: the sweep makes room for a new one.
        s.set("new", "3".into(), None).unwrap();
        assert_eq!((s.get("new"), s.len()), (Ok(Some("3".into())), 2));
        let (keys, more) = s.keys("", 10);
        assert!(!more);
        assert_eq!(keys.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(), ["long", "new"]);
        assert!(keys[0].ttl.unwrap() > Duration::from_secs(500) && keys[1].ttl.is_none(), "{keys:?}");
    }

    #[test]
    fn increments_count_a_fixed_window() {
        let s = store(10);
        assert_eq!(s.increment("n", 2, Some(Duration::from_secs(600))), Ok(2));
        assert_eq!(s.increment("n", -5, Some(Duration::from_millis(1))), Ok(-3));
        let (_, ttl) = s.entry("n").unwrap().unwrap();
        assert!(ttl.unwrap() > Duration::from_secs(500), "the first increment set the expiry: {ttl:?}");
        assert_eq!(s.increment("w", 7, Some(Duration::from_millis(1))), Ok(7));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.increment("w", 1, None), Ok(1), "a new window");
        assert_eq!(s.entry("w").unwrap().unwrap().1, None, "which took this increment's TTL");
        // The longest TTLs a filter can give are capped, not overflowed.
        s.set("far", "1".into(), Some(Duration::from_millis(u64::MAX))).unwrap();
        s.increment("far2", 1, Some(Duration::MAX)).unwrap();
        assert!(s.entry("far").unwrap().unwrap().1.unwrap() <= MAX_TTL);
        s.set("n", "1".into(), None).unwrap();
        assert_eq!(s.peek_increment("n", 5), Ok(6));
        assert_eq!(s.get("n"), Ok(Some("1".into())), "a peek writes nothing");
        s.set("word", "x".into(), None).unwrap();
        assert!(matches!(s.increment("word", 1, None), Err(KvError::NotANumber(_))));
        assert_eq!(s.increment("long", 123_456_789, None), Err(KvError::ValueTooLarge(8)), "a sum is a value too");
        assert_eq!(s.get("long"), Ok(None));
        let wide = KvStore::new(KvStoreConfig { max_value_bytes: 32, ..config(10, true, None) });
        wide.increment("max", i64::MAX, None).unwrap();
        assert!(matches!(wide.increment("max", 1, None), Err(KvError::NotANumber(_))));
        assert_eq!(wide.get("max"), Ok(Some(i64::MAX.to_string())), "a refused increment changes nothing");
    }

    #[test]
    fn increments_from_many_threads_are_not_lost() {
        let s = Arc::new(store(10));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| assert!(s.increment("n", 1, None).unwrap() > 0)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(s.get("n"), Ok(Some("4000".into())));
    }

    #[test]
    fn a_reload_keeps_the_contents_under_the_new_bounds() {
        let config = |max_keys| config(max_keys, false, None);
        let first = KvStores::carried_over([config(10)].iter(), None).unwrap();
        first.store("s").unwrap().set("a", "1".into(), None).unwrap();
        first.store("s").unwrap().set("b", "2".into(), None).unwrap();
        assert_eq!(first.writable("s").unwrap_err(), KvError::ReadOnly("s".into()));
        assert_eq!(first.store("t").unwrap_err(), KvError::UnknownStore("t".into()));
        let second = KvStores::carried_over([config(1)].iter(), Some(&first)).unwrap();
        let s = second.store("s").unwrap();
        assert_eq!((s.get("a"), s.get("b")), (Ok(Some("1".into())), Ok(Some("2".into()))));
        assert_eq!(s.set("c", "3".into(), None), Err(KvError::StoreFull("s".into())));
    }

    #[test]
    fn a_store_with_a_file_is_read_back_with_its_expiries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv/s.json");
        let with_file = [config(10, true, Some(path.clone()))];
        let first = KvStores::carried_over(with_file.iter(), None).unwrap();
        let s = first.store("s").unwrap();
        s.set("forever", "1".into(), None).unwrap();
        s.set("hour", "2".into(), Some(Duration::from_secs(3600))).unwrap();
        s.set("gone", "3".into(), Some(Duration::from_millis(1))).unwrap();
        s.save().unwrap();
        // Past "gone"'s expiry however fast the reload is (the file keeps
        // whole milliseconds of wall-clock time).
        std::thread::sleep(Duration::from_millis(20));
        // A new process: the file's live keys, with the time they had left.
        let second = KvStores::carried_over(with_file.iter(), None).unwrap();
        let s = second.store("s").unwrap();
        assert_eq!(s.get("forever"), Ok(Some("1".into())));
        let (value, ttl) = s.entry("hour").unwrap().unwrap();
        assert!(value == "2" && ttl.unwrap() > Duration::from_secs(3500), "{ttl:?}");
        assert_eq!((s.get("gone"), s.len()), (Ok(None), 2));
        // An expiry past any clock is capped, not overflowed.
        std::fs::write(&path, format!(r#"{{"keys":{{"k":{{"value":"v","expires_unix_ms":{}}}}}}}"#, u64::MAX)).unwrap();
        let far = KvStores::carried_over(with_file.iter(), None).unwrap();
        assert!(far.store("s").unwrap().entry("k").unwrap().unwrap().1.unwrap() <= MAX_TTL);
        // Not a store's file: the error names it, and the config's place.
        std::fs::write(&path, b"{\"keys\": 1}").unwrap();
        let (at, message) = KvStores::carried_over(with_file.iter(), None).unwrap_err();
        assert_eq!(at.key, "kv_stores.s");
        assert!(message.contains("s.json is not a key-value store's file"), "{message}");
        // A store kept over a reload is not read again: memory is newer.
        assert_eq!(KvStores::carried_over(with_file.iter(), Some(&second)).unwrap().store("s").unwrap().len(), 2);
    }

    #[test]
    fn the_flusher_writes_what_filters_changed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let stores = KvStores::carried_over([config(10, true, Some(path.clone()))].iter(), None).unwrap();
        stores.store("s").unwrap().increment("n", 5, None).unwrap();
        flush_changed();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, r#"{"keys":{"n":{"value":"5","expires_unix_ms":null}}}"#);
    }

    #[test]
    fn a_reload_that_gives_a_store_a_file_writes_its_contents_there() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        let in_memory = KvStores::carried_over([config(10, true, None)].iter(), None).unwrap();
        in_memory.store("s").unwrap().set("k", "1".into(), None).unwrap();
        let first = KvStores::carried_over([config(10, true, Some(a.clone()))].iter(), Some(&in_memory)).unwrap();
        drop(in_memory);
        flush_changed();
        assert!(std::fs::read_to_string(&a).unwrap().contains(r#""k":"#));
        let second = KvStores::carried_over([config(10, true, Some(b.clone()))].iter(), Some(&first)).unwrap();
        drop(first);
        second.store("s").unwrap().set("k2", "2".into(), None).unwrap();
        flush_changed();
        let text = std::fs::read_to_string(&b).unwrap();
        assert!(text.contains(r#""k":"#) && text.contains(r#""k2":"#), "{text}");
    }
}
