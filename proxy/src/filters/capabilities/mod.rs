//! Mechanism the host lends to filters: shared, native and fast. Filters
//! supply the policy on top (which key, which keyset, what to answer).
//!
//! * [`rate_limit`]: keyed GCRA buckets shared by every request.
//! * [`jwt`]: token verification against configured keysets.
//! * [`patterns`]: regular expressions compiled once and cached.
//! * [`kv`]: small key-value stores, also written through the admin API.
//! * [`outbound`]: HTTP requests to the upstream groups an entry was granted.

pub mod jwt;
pub mod kv;
pub mod outbound;
pub mod patterns;
pub mod rate_limit;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, Location};

/// Why a capability could not be built from config.
#[derive(Debug, thiserror::Error)]
#[error("{at}: {message}")]
pub struct CapabilityError {
    pub at: Location,
    pub message: String,
}

/// Every capability, built from one config version.
#[derive(Debug, Default)]
pub struct Capabilities {
    pub rate_limits: rate_limit::RateLimiters,
    pub kv_stores: kv::KvStores,
    pub keysets: BTreeMap<String, jwt::Keyset>,
    pub patterns: patterns::PatternCache,
    /// The config's upstream groups, by name (`config.upstream-groups`).
    pub upstream_groups: Vec<String>,
    /// How filters' fetches went; kept across reloads, as counters are.
    pub fetch_counts: Arc<outbound::FetchCounts>,
    /// This node's `CDN-Loop` member, which fetches carry (none in the
    /// empty set of a chain built without a config).
    pub cdn_loop_member: Option<http::HeaderValue>,
}

impl Capabilities {
    /// The capabilities of `config`. On a reload, `previous` are those
    /// serving until now: unchanged rate-limit policies keep their state,
    /// and key-value stores their contents.
    pub fn build(config: &Config, previous: Option<&Capabilities>) -> Result<Self, Box<CapabilityError>> {
        let mut keysets = BTreeMap::new();
        for (name, keyset) in &config.jwt_keysets {
            let built = jwt::Keyset::build(keyset)
                .map_err(|message| Box::new(CapabilityError { at: keyset.at.clone(), message }))?;
            keysets.insert(name.clone(), built);
        }
        Ok(Self {
            rate_limits: rate_limit::RateLimiters::carried_over(
                config.rate_limits.values(),
                previous.map(|p| &p.rate_limits),
            ),
            kv_stores: kv::KvStores::carried_over(config.kv_stores.values(), previous.map(|p| &p.kv_stores))
                .map_err(|(at, message)| Box::new(CapabilityError { at, message }))?,
            keysets,
            patterns: patterns::PatternCache::for_threads(config.server.threads),
            upstream_groups: config.upstreams.keys().cloned().collect(),
            fetch_counts: previous.map(|p| p.fetch_counts.clone()).unwrap_or_default(),
            cdn_loop_member: Some(config.server.cdn_loop.clone()),
        })
    }
}

/// A map every request shares, bounded without tracking recency: when full,
/// `prune` drops what it can, and if that frees less than a tenth the map
/// starts over (rather than scan again on the very next insert). Each entry
/// weighs 1, or what `insert_weighing` says, and the weights together stay
/// within the capacity.
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    capacity: usize,
    entries: std::sync::RwLock<Weighed<K, V>>,
}

#[derive(Debug)]
struct Weighed<K, V> {
    map: std::collections::HashMap<K, (V, usize)>,
    weight: usize,
}

impl<K, V> Default for Weighed<K, V> {
    fn default() -> Self {
        Self { map: Default::default(), weight: 0 }
    }
}

impl<K: Eq + std::hash::Hash, V> BoundedMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, entries: Default::default() }
    }

    /// `read` of the entry for `key`, if there is one.
    pub fn get<Q, R>(&self, key: &Q, read: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + std::hash::Hash + ?Sized,
    {
        self.entries.read().expect("bounded map lock").map.get(key).map(|(value, _)| read(value))
    }

    /// Insert, making room first when full; a capacity of 0 keeps nothing.
    pub fn insert(&self, key: K, value: V, prune: impl FnMut(&K, &mut V) -> bool) {
        self.insert_weighing(key, value, 1, prune)
    }

    /// Insert an entry of `weight`, making room first when full. An entry
    /// heavier than the whole capacity is not kept.
    pub fn insert_weighing(&self, key: K, value: V, weight: usize, mut prune: impl FnMut(&K, &mut V) -> bool) {
        if weight > self.capacity || self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.write().expect("bounded map lock");
        if entries.weight + weight > self.capacity {
            entries.map.retain(|key, (value, _)| prune(key, value));
            entries.weight = entries.map.values().map(|(_, weight)| weight).sum();
            if entries.weight + weight > self.capacity - self.capacity / 10 {
                *entries = Weighed::default();
            }
        }
        entries.weight += weight;
        if let Some((_, replaced)) = entries.map.insert(key, (value, weight)) {
            entries.weight -= replaced;
        }
    }

    pub fn len(&self) -> usize {
        self.entries.read().expect("bounded map lock").map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The weight of every entry together.
    pub fn weight(&self) -> usize {
        self.entries.read().expect("bounded map lock").weight
    }
}
