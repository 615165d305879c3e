//! Cache storage: complete responses in memory, in a sharded hash map.
//!
//! A hit clones the stored response header and shares the body (`Bytes`), so
//! nothing is parsed or decompressed on the hit path. (Pingora's `MemCache`,
//! meant for tests, serializes and zstd-compresses every header and pays to
//! undo that on every hit.) An entry becomes visible when its body is
//! complete; concurrent misses wait on the cache lock meanwhile.
//!
//! Memory is bounded by the LRU eviction manager that `EdgeCache` pairs with
//! this store: when an admitted entry pushes the total past the configured
//! size, Pingora purges the least recently used entries through here. The
//! store also keeps the index of cached URLs that purging by URL or prefix
//! needs.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::cache::key::{CacheHashKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget, PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheEntryKey, CacheKey, CacheMeta, Storage};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::v1::common::header_value_content_length;

/// Separates the URL a client asked for from the rest of a primary key.
pub const URL_END: char = '\u{0}';

/// The purge count when a request looked its key up, carried in the key's
/// extensions: a fill whose request began before a purge is not stored.
#[derive(Clone, Copy)]
pub struct PurgesSeen(pub u64);

const SHARDS: usize = 16;

/// What a stored `CacheMeta` holds. `CacheMeta` cannot be cloned, so a hit
/// rebuilds one from these fields.
struct StoredMeta {
    fresh_until: SystemTime,
    created: SystemTime,
    /// When the response was last validated: the reference for `Age`.
    epoch: SystemTime,
    stale_while_revalidate_sec: u32,
    stale_if_error_sec: u32,
    variance: Option<HashBinary>,
    header: ResponseHeader,
    /// Pingora's own serialization, kept only when the fields above cannot
    /// rebuild the meta: after a full refetch its `provenance` (the start of
    /// the entry's family, which `Vary` lookups compare against) differs from
    /// `created`. Rare, so the hit path stays free of (de)serialization.
    exact: Option<(Vec<u8>, Vec<u8>)>,
}

impl StoredMeta {
    fn from_meta(meta: &CacheMeta) -> Self {
        let exact = (meta.provenance() != meta.created()).then(|| meta.serialize().ok()).flatten();
        Self {
            exact,
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            epoch: meta.epoch(),
            stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
            stale_if_error_sec: meta.stale_if_error_sec(),
            variance: meta.variance(),
            header: meta.response_header_copy(),
        }
    }

    fn to_meta(&self) -> CacheMeta {
        if let Some(meta) =
            self.exact.as_ref().and_then(|(internal, header)| CacheMeta::deserialize(internal, header).ok())
        {
            return meta;
        }
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate_sec,
            self.stale_if_error_sec,
            self.header.clone(),
        );
        if self.epoch != self.created {
            meta.set_epoch_override(self.epoch);
        }
        if let Some(variance) = self.variance {
            meta.set_variance_key(variance);
        }
        meta
    }

    /// Roughly what the header costs in memory, for the size bound.
    fn weight(&self) -> usize {
        self.header.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum::<usize>() + 128
    }
}

struct Entry {
    meta: StoredMeta,
    body: Bytes,
    /// What the entry counts for in the size bound.
    weight: usize,
    /// How many purges there had been when it was stored: a purge numbered
    /// below this came before it.
    stored_after_purges: u64,
}

impl Entry {
    fn new(meta: StoredMeta, body: Bytes, stored_after_purges: u64) -> Self {
        let weight = body.len() + meta.weight();
        Self { meta, body, weight, stored_after_purges }
    }
}

type Shard = RwLock<HashMap<HashBinary, Arc<Entry>>>;

pub struct EdgeStorage {
    shards: Box<[Shard]>,
    /// Client-visible URL (`host/path?query`) to every entry stored under it
    /// (one per `Vary` variant), and back.
    index: Mutex<Index>,
    evictions: AtomicU64,
    /// How many invalidating purges there have been: a fill records the
    /// count when its request looked the key up (`PurgesSeen`).
    purges: AtomicU64,
    /// The recent purges' targets. A fill that began before a purge of its
    /// URL is not stored, so a purge cannot be undone by a fetch in flight;
    /// fills of other URLs are not held back by it.
    purge_log: Mutex<PurgeLog>,
}

/// Purges kept for fills in flight to check against; a fill older than all
/// of them is not stored, as it may predate a purge that is forgotten.
const PURGES_KEPT: usize = 4096;

#[derive(Default)]
struct PurgeLog {
    /// (purge number, URL or prefix, whether a prefix), oldest first.
    recent: std::collections::VecDeque<(u64, String, bool)>,
    /// The number of the oldest purge kept.
    first_kept: u64,
}

impl PurgeLog {
    /// The latest purge numbered `seen` or later that may have covered
    /// `url` (`None`: a fill whose URL is unknown, which any purge covers);
    /// `u64::MAX` when such a purge may be forgotten.
    fn covering(&self, seen: u64, url: Option<&str>) -> Option<u64> {
        if seen < self.first_kept {
            return Some(u64::MAX);
        }
        let covers = |target: &String, prefix: bool| match url {
            None => true,
            Some(url) if prefix => url.starts_with(target.as_str()),
            Some(url) => url == target,
        };
        self.recent.iter().rev().take_while(|(number, ..)| *number >= seen).find(|(_, t, p)| covers(t, *p)).map(|e| e.0)
    }
}

#[derive(Default)]
struct Index {
    by_url: BTreeMap<String, BTreeSet<CompactCacheKey>>,
    url_of: HashMap<CompactCacheKey, String>,
}

impl Index {
    fn insert(&mut self, url: &str, key: CompactCacheKey) {
        self.url_of.insert(key.clone(), url.to_string());
        self.by_url.entry(url.to_string()).or_default().insert(key);
    }

    fn remove(&mut self, key: &CompactCacheKey) {
        if let Some(url) = self.url_of.remove(key)
            && let Some(keys) = self.by_url.get_mut(&url)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_url.remove(&url);
            }
        }
    }
}

impl Default for EdgeStorage {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            index: Mutex::default(),
            evictions: AtomicU64::new(0),
            purges: AtomicU64::new(0),
            purge_log: Mutex::default(),
        }
    }
}

impl EdgeStorage {
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The entries stored under `url`, or under every URL starting with it.
    pub fn keys_for(&self, url: &str, prefix: bool) -> Vec<CompactCacheKey> {
        let index = self.index.lock().expect("cache index lock");
        if prefix {
            index
                .by_url
                .range(url.to_string()..)
                .take_while(|(u, _)| u.starts_with(url))
                .flat_map(|(_, k)| k.iter().cloned())
                .collect()
        } else {
            index.by_url.get(url).map(|k| k.iter().cloned().collect()).unwrap_or_default()
        }
    }

    /// Keep the fills in flight for `url` (or every URL under it) from
    /// being stored: a purge is coming, and they may hold content from
    /// before it (even for a URL not yet indexed, because its first fetch is
    /// still running).
    pub fn cancel_fills(&self, url: &str, prefix: bool) {
        let mut log = self.purge_log.lock().expect("cache purge log lock");
        let number = self.purges.fetch_add(1, Ordering::SeqCst);
        log.recent.push_back((number, url.to_string(), prefix));
        if log.recent.len() > PURGES_KEPT {
            log.recent.pop_front();
            log.first_kept = log.recent.front().map_or(number, |(n, ..)| *n);
        }
    }

    /// Drop the entry stored under `key`; whether there was one.
    pub fn remove(&self, key: &CompactCacheKey) -> bool {
        let hash = key.combined_bin();
        if self.shard(&hash).write().expect("cache shard lock").remove(&hash).is_none() {
            return false;
        }
        self.index.lock().expect("cache index lock").remove(key);
        true
    }

    pub fn purges_seen(&self) -> PurgesSeen {
        PurgesSeen(self.purges.load(Ordering::SeqCst))
    }

    fn shard(&self, hash: &HashBinary) -> &Shard {
        &self.shards[hash[0] as usize % SHARDS]
    }

    fn get(&self, hash: &HashBinary) -> Option<Arc<Entry>> {
        self.shard(hash).read().expect("cache shard lock").get(hash).cloned()
    }
}

#[async_trait]
impl Storage for EdgeStorage {
    async fn lookup(&'static self, key: &CacheKey, _trace: &SpanHandle) -> Result<Option<(CacheMeta, HitHandler)>> {
        Ok(self.get(&key.combined_bin()).map(|entry| {
            let hit = Hit { range: 0..entry.body.len(), body: entry.body.clone(), done: false, weight: entry.weight };
            (entry.meta.to_meta(), Box::new(hit) as HitHandler)
        }))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        // Room for the whole body when its length is known (a body grown by
        // doubling would hold up to twice its size); a length past the cap
        // never gets here (`EdgeCache::too_large`).
        let length = header_value_content_length(meta.headers().get(http::header::CONTENT_LENGTH));
        Ok(Box::new(Fill {
            storage: self,
            key: key.to_compact(),
            url: key.primary_key_str().and_then(|p| p.split(URL_END).next()).map(str::to_string),
            meta: Some(StoredMeta::from_meta(meta)),
            body: BytesMut::with_capacity(length.unwrap_or(0)),
            purges_at_start: key
                .extensions
                .get::<PurgesSeen>()
                .map_or_else(|| self.purges.load(Ordering::SeqCst), |seen| seen.0),
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        // Entries have no ids here, so an identified target is never ours.
        if let PurgeTarget::Exact(entry) = target
            && entry.entry_id().is_some()
        {
            return Ok(PurgeOutcome::NotFound);
        }
        let key = target.key();
        if matches!(purge_type, PurgeType::Invalidation) {
            // Pingora's own purge of one key: its URL's fills, or all of
            // them if the key is not indexed yet.
            let url = self.index.lock().expect("cache index lock").url_of.get(key).cloned();
            match url {
                Some(url) => self.cancel_fills(&url, false),
                None => self.cancel_fills("", true),
            }
        }
        if !self.remove(key) {
            return Ok(PurgeOutcome::NotFound);
        }
        if matches!(purge_type, PurgeType::Eviction) {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(PurgeOutcome::Purged(None))
    }

    async fn update_meta(&'static self, key: &CacheKey, meta: &CacheMeta, _trace: &SpanHandle) -> Result<bool> {
        let hash = key.combined_bin();
        let mut shard = self.shard(&hash).write().expect("cache shard lock");
        let Some(entry) = shard.get_mut(&hash) else { return Ok(false) };
        *entry = Arc::new(Entry::new(StoredMeta::from_meta(meta), entry.body.clone(), entry.stored_after_purges));
        Ok(true)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

/// Reads one stored body, or a range of it.
struct Hit {
    body: Bytes,
    range: std::ops::Range<usize>,
    done: bool,
    /// What the entry counts for in the size bound.
    weight: usize,
}

#[async_trait]
impl HandleHit for Hit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(None);
        }
        Ok(Some(self.body.slice(self.range.clone())))
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn get_eviction_weight(&self) -> usize {
        self.weight
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let end = end.unwrap_or(self.body.len());
        if start > end || end > self.body.len() {
            return Error::e_explain(ErrorType::InternalError, format!("range {start}..{end} outside the body"));
        }
        self.range = start..end;
        self.done = false;
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

/// Collects a response being fetched; it is stored when complete.
struct Fill {
    storage: &'static EdgeStorage,
    key: CompactCacheKey,
    url: Option<String>,
    meta: Option<StoredMeta>,
    body: BytesMut,
    purges_at_start: u64,
}

#[async_trait]
impl HandleMiss for Fill {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        // Pingora stops a body past `cache.max_object_mb` before it gets here.
        self.body.extend_from_slice(&data);
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let meta = self.meta.take().expect("finish runs once");
        let body = std::mem::take(&mut self.body);
        // A body that outgrew its reservation may hold much more than it
        // uses, which the weight would not count.
        let body =
            if body.capacity() > body.len() + body.len() / 8 { Bytes::copy_from_slice(&body) } else { body.freeze() };
        let hash = self.key.combined_bin();
        // Checked and stored under the purge log's lock: a purge recorded
        // after the check finds the entry in the index.
        let log = self.storage.purge_log.lock().expect("cache purge log lock");
        let purges = self.storage.purges.load(Ordering::SeqCst);
        let covering =
            (purges != self.purges_at_start).then(|| log.covering(self.purges_at_start, self.url.as_deref())).flatten();
        if let Some(covering) = covering {
            // Not stored. The eviction manager sets the key's weight to what
            // this returns: that of an entry stored under it after the purge
            // (a newer fill's), else nothing (an older one is being purged;
            // the manager tracks the key until it ages out).
            let newer = self.storage.get(&hash).filter(|e| e.stored_after_purges > covering);
            return Ok(MissFinishType::Created(newer.map_or(0, |e| e.weight)));
        }
        let entry = Entry::new(meta, body, purges);
        let size = entry.weight;
        let entry = Arc::new(entry);
        self.storage.shard(&hash).write().expect("cache shard lock").insert(hash, entry);
        if let Some(url) = &self.url {
            self.storage.index.lock().expect("cache index lock").insert(url, self.key.clone());
        }
        drop(log);
        Ok(MissFinishType::Created(size))
    }
}

/// A purge target for an entry found in the index.
pub fn entry(key: CompactCacheKey) -> CacheEntryKey {
    CacheEntryKey::key_only(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_is_held_back_only_by_the_purges_that_cover_it() {
        let storage = EdgeStorage::default();
        let seen = storage.purges_seen().0;
        storage.cancel_fills("a.example/x", false);
        storage.cancel_fills("b.example/", true);
        let log = storage.purge_log.lock().unwrap();
        assert_eq!(log.covering(seen, Some("a.example/x")), Some(seen));
        assert_eq!(log.covering(seen, Some("a.example/y")), None);
        assert_eq!(log.covering(seen, Some("b.example/any")), Some(seen + 1));
        assert_eq!(log.covering(seen, None), Some(seen + 1), "a fill of an unknown URL is covered by any purge");
        assert_eq!(log.covering(seen + 2, Some("a.example/x")), None, "a purge before the fill began does not count");
        drop(log);
        // Past what the log keeps, a fill that began before all of it is held back.
        for i in 0..PURGES_KEPT {
            storage.cancel_fills(&format!("c.example/{i}"), false);
        }
        assert!(storage.purge_log.lock().unwrap().covering(seen, Some("z.example/")).is_some());
    }
}
