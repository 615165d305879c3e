//! Shutdown: what SIGTERM waits for. Pingora stops accepting at once and
//! then sleeps the whole grace period (`server.shutdown_grace_secs`),
//! whatever is left; [`Drain`] ends the process as soon as nothing is: no
//! proxied request and no admin call in flight. nginx and Envoy stop once
//! drained too, so a rolling restart does not wait out every node's grace.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

static REQUESTS: AtomicUsize = AtomicUsize::new(0);
static ADMIN_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Counts one piece of work as in flight while it lives.
pub struct InFlight(&'static AtomicUsize);

impl InFlight {
    /// A proxied request, from its context to its log line (background
    /// cache refreshes included).
    pub fn request() -> Self {
        Self::start(&REQUESTS)
    }

    /// An admin API call: an upload stores and swaps a module, and its
    /// caller should learn whether it did.
    pub fn admin_call() -> Self {
        Self::start(&ADMIN_CALLS)
    }

    fn start(counter: &'static AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Proxied requests being served (for the metrics).
pub fn requests_in_flight() -> usize {
    REQUESTS.load(Ordering::Relaxed)
}

/// How often a draining proxy looks at what is in flight.
const POLL: Duration = Duration::from_millis(20);

/// How long nothing must be in flight before the process exits. A request
/// is counted only once its head is read, and an HTTP/2 connection still
/// writes a finished stream's last frames, and takes in streams its client
/// sent before the GOAWAY, after the count has dropped.
const SETTLE: Duration = Duration::from_secs(1);

/// Exits once shutdown has begun and nothing has been in flight for
/// [`SETTLE`]; Pingora's grace period stays the upper bound.
pub struct Drain;

#[async_trait::async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let mut idle_for = Duration::ZERO;
        while idle_for < SETTLE {
            tokio::time::sleep(POLL).await;
            let idle = REQUESTS.load(Ordering::Relaxed) == 0 && ADMIN_CALLS.load(Ordering::Relaxed) == 0;
            idle_for = if idle { idle_for + POLL } else { Duration::ZERO };
        }
        log::info!("shutdown: nothing in flight, exiting before the grace period ends");
        // Pingora's main thread is asleep for the rest of the grace period,
        // and nothing of Cascade's runs after it: the module store is
        // written as it changes, the key-value stores' last changes now,
        // and the cache lives in memory.
        crate::filters::capabilities::kv::flush_changed();
        log::logger().flush();
        std::process::exit(0)
    }
}
