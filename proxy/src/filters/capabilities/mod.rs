//! Mechanism the host lends to filters: shared, native and fast. Filters
//! supply the policy on top (which key, which keyset, what to answer).
//!
//! * [`rate_limit`]: keyed GCRA buckets shared by every request.
//! * [`jwt`]: token verification against configured keysets.
//! * [`patterns`]: regular expressions compiled once and cached.

pub mod jwt;
pub mod patterns;
pub mod rate_limit;

use std::collections::BTreeMap;

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
    pub keysets: BTreeMap<String, jwt::Keyset>,
    pub patterns: patterns::PatternCache,
}

impl Capabilities {
    /// The capabilities of `config`. On a reload, `previous` are those
    /// serving until now: unchanged rate-limit policies keep their state.
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
            keysets,
            patterns: patterns::PatternCache::default(),
        })
    }
}

/// A map every request shares, bounded without tracking recency: when full,
/// `prune` drops what it can, and if that frees less than a tenth the map
/// starts over (rather than scan again on the very next insert).
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    capacity: usize,
    entries: std::sync::RwLock<std::collections::HashMap<K, V>>,
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
        self.entries.read().expect("bounded map lock").get(key).map(read)
    }

    /// Insert, making room first when full; a capacity of 0 keeps nothing.
    pub fn insert(&self, key: K, value: V, prune: impl FnMut(&K, &mut V) -> bool) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.write().expect("bounded map lock");
        if entries.len() >= self.capacity {
            entries.retain(prune);
            if entries.len() >= self.capacity - self.capacity / 10 {
                entries.clear();
            }
        }
        entries.insert(key, value);
    }

    pub fn len(&self) -> usize {
        self.entries.read().expect("bounded map lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
