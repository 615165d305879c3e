//! Types of the host capabilities, shared by the real and the mock host.

use std::fmt;
use std::time::Duration;

/// The outcome of a rate-limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed; when it may, the cost was taken.
    pub allowed: bool,
    /// The bucket's capacity (the policy's burst).
    pub limit: u32,
    /// Requests left after this check.
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset_after: Duration,
    /// When refused, time until the cost could be taken.
    pub retry_after: Duration,
    /// Time an empty bucket takes to refill: the policy's window.
    pub window: Duration,
}

/// Why a rate-limit check could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// No policy with this name is configured.
    UnknownPolicy(String),
    /// The cost is 0 or larger than the policy's burst.
    InvalidCost(u32),
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownPolicy(p) => write!(f, "no rate-limit policy named {p:?}"),
            Self::InvalidCost(c) => write!(f, "invalid cost {c}"),
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    UnknownKeyset(String),
    Malformed(String),
    AlgorithmNotAllowed(String),
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKeyset(k) => write!(f, "no keyset named {k:?}"),
            Self::Malformed(m) => write!(f, "malformed token: {m}"),
            Self::AlgorithmNotAllowed(a) => write!(f, "algorithm {a} is not allowed"),
            Self::UnknownKey => f.write_str("no key matches the token"),
            Self::BadSignature => f.write_str("bad signature"),
            Self::Expired => f.write_str("the token has expired"),
            Self::NotYetValid => f.write_str("the token is not valid yet"),
            Self::WrongIssuer => f.write_str("wrong issuer"),
            Self::WrongAudience => f.write_str("wrong audience"),
        }
    }
}

/// Why a key-value operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    /// No store with this name is configured.
    UnknownStore(String),
    /// The store is read-only to filters (`filters_may_write = false`).
    ReadOnly(String),
    /// The key is empty or longer than 256 bytes.
    InvalidKey(String),
    /// The value is longer than the store's `max_value_bytes`, given.
    ValueTooLarge(u32),
    /// The store holds `max_keys` keys (expired ones dropped first, but for
    /// those that expired within the last second): the new key was not
    /// added.
    StoreFull(String),
    /// `increment` on a value that is not a whole number, or past `i64`.
    NotANumber(String),
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownStore(s) => write!(f, "no key-value store named {s:?}"),
            Self::ReadOnly(s) => write!(f, "key-value store {s:?} is read-only to filters"),
            Self::InvalidKey(k) => write!(f, "invalid key: {k}"),
            Self::ValueTooLarge(n) => write!(f, "the value is longer than the store's max_value_bytes ({n})"),
            Self::StoreFull(s) => write!(f, "key-value store {s:?} is full"),
            Self::NotANumber(m) => f.write_str(m),
        }
    }
}
