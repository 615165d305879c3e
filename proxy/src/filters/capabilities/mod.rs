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
