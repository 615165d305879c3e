//! Keyed rate limiting: one governor GCRA limiter per policy, keyed by
//! whatever string the filter picks (client IP, user id, ...).
//!
//! Memory stays bounded. Keys whose bucket has refilled completely carry no
//! information and are evicted (at most once per second, when the table is
//! full, and every ten seconds otherwise). If the table is still full after
//! that, a key that has no bucket yet is checked against one of
//! [`OVERFLOW_BUCKETS`] shared overflow buckets (by a keyed hash of the key)
//! until room frees up: a flood of new keys is still limited, the table
//! holds about `max_keys` keys at most (past it by the overflow keys, and
//! for a moment by one key per check running at once), the keys already in
//! the table keep their own buckets (a flood neither drains them nor
//! refills them), and a new client shares its bucket with a few of the
//! flood's keys rather than all of them.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::{NoOpMiddleware, StateInformationMiddleware};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::{Quota, RateLimiter};

use crate::config::RateLimitPolicyConfig;

type KeyedLimiter = RateLimiter<String, KeyTable, DefaultClock, StateInformationMiddleware>;

/// The limiter's buckets by key, shared with its [`Policy`], which asks
/// whether a key already has one (the limiter itself cannot say).
#[derive(Clone, Default)]
struct KeyTable(Arc<DashMapStateStore<String>>);

impl StateStore for KeyTable {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<String> for KeyTable {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&*self.0);
    }

    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&*self.0)
    }

    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&*self.0)
    }
}

/// The longest key kept as it is: a client's address, user or API key is
/// far shorter. A longer key is kept as its SHA-256 instead, so that the
/// table, which bounds how many keys it holds, also bounds their size: keys
/// often come from request headers a client chooses.
const MAX_KEY_BYTES: usize = 256;

/// The key of `key`'s bucket: itself, or the digest of a longer one. The
/// digest's prefix, like the overflow key's, is no text a filter would use.
fn bucket_key(key: &str) -> String {
    if key.len() <= MAX_KEY_BYTES {
        key.to_string()
    } else {
        format!("\u{0}sha256:{}", crate::filters::store::sha256_hex(key.as_bytes()))
    }
}

/// How many buckets the keys that find the table full share.
const OVERFLOW_BUCKETS: u64 = 256;
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(10);
const FULL_TABLE_HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

/// The outcome of one check, as the WIT `decision` record describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    pub reset_after: Duration,
    pub retry_after: Duration,
    /// Time an empty bucket takes to refill.
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("no rate-limit policy named {0:?}")]
    UnknownPolicy(String),
    #[error("cost {0} is zero or larger than the policy's burst")]
    InvalidCost(u32),
}

/// One policy's limiter and its housekeeping state.
pub struct Policy {
    config: RateLimitPolicyConfig,
    limiter: KeyedLimiter,
    keys: KeyTable,
    created: Instant,
    /// Nanoseconds since `created`, of the last eviction.
    last_housekeeping: AtomicU64,
    /// Picks a key's overflow bucket; keyed per process, so that no client
    /// can aim its flood at the bucket another's key falls into.
    overflow_hasher: std::hash::RandomState,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Policy {
    pub fn new(config: RateLimitPolicyConfig) -> Self {
        let burst = NonZeroU32::new(config.burst).expect("config checks burst >= 1");
        let quota = Quota::with_period(config.interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        let keys = KeyTable::default();
        Self {
            limiter: RateLimiter::<_, _, _, NoOpMiddleware<_>>::new(quota, keys.clone(), DefaultClock::default())
                .with_middleware::<StateInformationMiddleware>(),
            keys,
            config,
            created: Instant::now(),
            last_housekeeping: AtomicU64::new(0),
            overflow_hasher: std::hash::RandomState::new(),
        }
    }

    fn valid_cost(&self, cost: u32) -> Result<NonZeroU32, CheckError> {
        NonZeroU32::new(cost).filter(|n| n.get() <= self.config.burst).ok_or(CheckError::InvalidCost(cost))
    }

    /// Take `cost` from `key`'s bucket.
    pub fn check(&self, key: &str, cost: u32) -> Result<Decision, CheckError> {
        let n = self.valid_cost(cost)?;
        let key = bucket_key(key);
        let key = if self.has_room() || self.keys.0.contains_key(&key) { key } else { self.overflow_key(&key) };
        let burst = self.config.burst;
        let interval = self.config.interval;
        let outcome = self.limiter.check_key_n(&key, n).map_err(|_| CheckError::InvalidCost(cost))?;
        Ok(match outcome {
            Ok(snapshot) => self.allowed(snapshot.remaining_burst_capacity()),
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(self.limiter.clock().now());
                Decision {
                    allowed: false,
                    limit: burst,
                    remaining: 0,
                    reset_after: retry_after + interval * (burst - cost),
                    retry_after,
                    window: interval * burst,
                }
            }
        })
    }

    /// An allowed check that leaves `remaining` in the bucket.
    fn allowed(&self, remaining: u32) -> Decision {
        let (burst, interval) = (self.config.burst, self.config.interval);
        Decision {
            allowed: true,
            limit: burst,
            remaining,
            reset_after: interval * (burst - remaining.min(burst)),
            retry_after: Duration::ZERO,
            window: interval * burst,
        }
    }

    /// Whether a new key may get its own bucket, evicting idle keys when due.
    fn has_room(&self) -> bool {
        let full = self.limiter.len() >= self.config.max_keys;
        let now = self.created.elapsed().as_nanos() as u64;
        let every = if full { FULL_TABLE_HOUSEKEEPING_EVERY } else { HOUSEKEEPING_EVERY };
        let last = self.last_housekeeping.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= every.as_nanos() as u64
            && self.last_housekeeping.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
            return self.limiter.len() < self.config.max_keys;
        }
        !full
    }

    /// The shared bucket `key` counts against while the table is full.
    fn overflow_key(&self, key: &str) -> String {
        use std::hash::BuildHasher;
        format!("\u{0}cascade-overflow:{}", self.overflow_hasher.hash_one(key) % OVERFLOW_BUCKETS)
    }

    /// Keys currently tracked.
    #[cfg(test)]
    pub fn tracked_keys(&self) -> usize {
        self.limiter.len()
    }
}

/// Every configured policy, by name.
#[derive(Debug, Default)]
pub struct RateLimiters {
    policies: HashMap<String, Arc<Policy>>,
}

impl RateLimiters {
    pub fn new<'a>(configs: impl Iterator<Item = &'a RateLimitPolicyConfig>) -> Self {
        Self::carried_over(configs, None)
    }

    /// The policies of a reloaded config: one left exactly as it was in
    /// `previous` keeps its buckets, so a reload is not a free burst for
    /// every client. A changed or new policy starts empty.
    pub fn carried_over<'a>(
        configs: impl Iterator<Item = &'a RateLimitPolicyConfig>,
        previous: Option<&RateLimiters>,
    ) -> Self {
        let policies = configs
            .map(|config| {
                let kept = previous.and_then(|p| p.policies.get(&config.name)).filter(|p| p.config == *config);
                (config.name.clone(), kept.cloned().unwrap_or_else(|| Arc::new(Policy::new(config.clone()))))
            })
            .collect();
        Self { policies }
    }

    pub fn check(&self, policy: &str, key: &str, cost: u32) -> Result<Decision, CheckError> {
        self.policy(policy)?.check(key, cost)
    }

    /// A check that takes nothing and allows, for a request no client sent
    /// (a background cache refresh). The bucket is reported full.
    pub fn check_without_taking(&self, policy: &str, cost: u32) -> Result<Decision, CheckError> {
        let policy = self.policy(policy)?;
        policy.valid_cost(cost)?;
        Ok(policy.allowed(policy.config.burst))
    }

    fn policy(&self, name: &str) -> Result<&Policy, CheckError> {
        self.policies.get(name).map(Arc::as_ref).ok_or_else(|| CheckError::UnknownPolicy(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(burst: u32, interval: Duration, max_keys: usize) -> Policy {
        Policy::new(RateLimitPolicyConfig { name: "p".into(), burst, interval, max_keys })
    }

    #[test]
    fn burst_then_refuse_with_retry_after() {
        let p = policy(3, Duration::from_secs(60), 100);
        for expected_remaining in [2, 1, 0] {
            let d = p.check("a", 1).unwrap();
            assert!(d.allowed);
            assert_eq!(d.remaining, expected_remaining);
            assert_eq!(d.limit, 3);
        }
        let refused = p.check("a", 1).unwrap();
        assert!(!refused.allowed);
        assert!(refused.retry_after > Duration::from_secs(50), "{refused:?}");
        // Keys are independent.
        assert!(p.check("b", 1).unwrap().allowed);
    }

    #[test]
    fn cost_is_validated() {
        let p = policy(3, Duration::from_secs(1), 100);
        assert_eq!(p.check("a", 0), Err(CheckError::InvalidCost(0)));
        assert_eq!(p.check("a", 4), Err(CheckError::InvalidCost(4)));
        assert!(p.check("a", 3).unwrap().allowed);
    }

    #[test]
    fn long_keys_are_kept_as_their_digest_and_stay_apart() {
        let p = policy(1, Duration::from_secs(3600), 10);
        let (long_a, long_b) = ("a".repeat(64 << 10), format!("{}b", "a".repeat((64 << 10) - 1)));
        assert!(p.check(&long_a, 1).unwrap().allowed);
        assert!(!p.check(&long_a, 1).unwrap().allowed, "the same long key shares its bucket");
        assert!(p.check(&long_b, 1).unwrap().allowed, "another long key has a bucket of its own");
        assert!(p.keys.0.iter().all(|entry| entry.key().len() <= MAX_KEY_BYTES), "no key is kept longer");
        // A short key is kept as it is.
        assert!(p.check("short", 1).unwrap().allowed);
        assert!(p.keys.0.contains_key("short"));
    }

    #[test]
    fn key_table_is_bounded() {
        let p = policy(1, Duration::from_secs(3600), 10);
        for i in 0..1000 {
            let _ = p.check(&format!("key-{i}"), 1);
        }
        // At most max_keys own buckets, plus the shared overflow buckets.
        assert!(p.tracked_keys() <= 10 + OVERFLOW_BUCKETS as usize, "{} keys tracked", p.tracked_keys());
        // New clients while the table is full share a bucket with some of
        // the flood's keys, not all: two in different buckets both pass.
        let p = policy(1, Duration::from_secs(3600), 10);
        for i in 0..10 {
            assert!(p.check(&format!("held-{i}"), 1).unwrap().allowed);
        }
        let first = p.overflow_key("new-0");
        let other = (1..).map(|i| format!("new-{i}")).find(|k| p.overflow_key(k) != first).unwrap();
        assert!(p.check("new-0", 1).unwrap().allowed);
        assert!(p.check(&other, 1).unwrap().allowed, "one new client's request refused another's");
        assert!(!p.check("new-0", 1).unwrap().allowed, "an overflow bucket is a bucket");
    }

    #[test]
    fn a_full_table_still_serves_the_keys_it_holds() {
        let p = policy(1, Duration::from_secs(3600), 2);
        assert!(p.check("a", 1).unwrap().allowed);
        assert!(p.check("b", 1).unwrap().allowed);
        // The table is full: "a" is still checked against its own, spent,
        // bucket, not handed the overflow bucket's fresh one.
        assert!(!p.check("a", 1).unwrap().allowed);
        // New keys share overflow buckets: the first takes its bucket, the
        // next in the same bucket is refused, and neither touches "b".
        let same_bucket = (0..).map(|i| format!("d{i}")).find(|k| p.overflow_key(k) == p.overflow_key("c")).unwrap();
        assert!(p.check("c", 1).unwrap().allowed);
        assert!(!p.check(&same_bucket, 1).unwrap().allowed);
        assert!(!p.check("b", 1).unwrap().allowed);
    }

    #[test]
    fn idle_keys_are_evicted_to_make_room() {
        // Buckets refill in a millisecond, so every key is idle soon after.
        let p = policy(1, Duration::from_millis(1), 10);
        for i in 0..10 {
            assert!(p.check(&format!("key-{i}"), 1).unwrap().allowed);
        }
        assert_eq!(p.tracked_keys(), 10);
        // A full table evicts idle keys at most once a second.
        std::thread::sleep(FULL_TABLE_HOUSEKEEPING_EVERY + Duration::from_millis(100));
        assert!(p.check("new", 1).unwrap().allowed);
        assert_eq!(p.tracked_keys(), 1, "the idle keys are gone, and the new key has its own bucket");
    }

    #[test]
    fn a_reload_keeps_the_buckets_of_an_unchanged_policy() {
        let config = |name: &str, burst: u32| RateLimitPolicyConfig {
            name: name.into(),
            burst,
            interval: Duration::from_secs(3600),
            max_keys: 100,
        };
        let before = RateLimiters::new([config("same", 1), config("changed", 1)].iter());
        assert!(before.check("same", "k", 1).unwrap().allowed);
        assert!(before.check("changed", "k", 1).unwrap().allowed);
        let after = RateLimiters::carried_over([config("same", 1), config("changed", 2)].iter(), Some(&before));
        assert!(!after.check("same", "k", 1).unwrap().allowed, "the spent bucket is kept");
        assert_eq!(after.check("changed", "k", 1).unwrap().remaining, 1, "a changed policy starts afresh");
    }

    #[test]
    fn a_check_without_taking_leaves_the_bucket_alone() {
        let config =
            RateLimitPolicyConfig { name: "p".into(), burst: 1, interval: Duration::from_secs(3600), max_keys: 10 };
        let limiters = RateLimiters::new([config].iter());
        assert!(limiters.check("p", "k", 1).unwrap().allowed);
        assert!(limiters.check_without_taking("p", 1).unwrap().allowed);
        assert_eq!(limiters.check_without_taking("p", 2), Err(CheckError::InvalidCost(2)));
        assert!(!limiters.check("p", "k", 1).unwrap().allowed, "still spent");
        assert!(limiters.check("p", "other", 1).unwrap().allowed, "nothing taken from other keys either");
    }

    #[test]
    fn unknown_policy() {
        let limiters = RateLimiters::default();
        assert_eq!(limiters.check("nope", "k", 1), Err(CheckError::UnknownPolicy("nope".into())));
    }
}
