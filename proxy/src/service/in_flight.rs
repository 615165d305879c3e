//! Requests in flight: from a request's context to its log line. SIGTERM's
//! drain waits for none to be left (`server::Drain`), and the metrics show
//! the count.

use std::sync::atomic::{AtomicUsize, Ordering};

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Held by each request's context: counted while it lives.
pub struct InFlight(());

impl InFlight {
    pub fn start() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many requests (background cache refreshes included) are being served.
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Relaxed)
}
