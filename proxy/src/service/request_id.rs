//! Request ids: unique within a process and unlikely to repeat across
//! restarts, cheap enough for every request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Hands out ids as 16 hex digits: a per-process prefix and a counter.
pub struct RequestIds {
    prefix: u32,
    counter: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestIds {
    pub fn new() -> Self {
        let nanos =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos() ^ d.as_secs() as u32).unwrap_or(0);
        Self { prefix: nanos ^ std::process::id().rotate_left(16), counter: AtomicU64::new(0) }
    }

    pub fn next(&self) -> Arc<str> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{:08x}", self.prefix, n as u32).into()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_distinct() {
        let ids = super::RequestIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }
}
