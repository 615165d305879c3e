//! A circuit breaker for each chain entry: a filter that fails on more than
//! `failure_ratio` of at least `min_requests` requests within `window` is
//! switched off for `cooldown`. While it is open the filter is not
//! instantiated at all and its `on_error` policy applies at once: fail-closed
//! answers with the entry's failure status, fail-open skips it. After the
//! cool-down one request probes the filter (half-open): success closes the
//! breaker, failure opens it again. Only a probe's result decides: the late
//! result of a request admitted before the breaker opened (its response
//! phase can come long after, behind a slow upstream) is ignored. A probe
//! that reports after the next one was let through still counts: a slow
//! upstream must not keep a healthy filter's breaker half-open for good.
//!
//! A module swap or reload builds new chains: a link that runs the same
//! module version with the same settings keeps its breaker
//! (`chain::carried_breaker`), and a changed one starts closed.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::config::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }
}

/// What `admit` let through, to be handed back to `record`: a call, or a
/// probe of a half-open breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Call,
    Probe,
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// One probe request is running the filter, since `probing_since`. A
    /// probe whose request was dropped mid-call never reports, so after one
    /// cool-down another request may probe.
    HalfOpen {
        probing_since: Instant,
    },
}

#[derive(Debug)]
struct Window {
    phase: Phase,
    started: Instant,
    calls: u32,
    failures: u32,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    window: Mutex<Window>,
    /// Whether `window.phase` is `Closed`, readable without the lock: the
    /// common case of `admit` takes neither the lock nor the clock.
    closed: AtomicBool,
    opened: AtomicU64,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        let window = Window { phase: Phase::Closed, started: Instant::now(), calls: 0, failures: 0 };
        Self { config, window: Mutex::new(window), closed: AtomicBool::new(true), opened: AtomicU64::new(0) }
    }

    /// Whether this request may run the filter, and as what.
    pub fn admit(&self) -> Option<Admission> {
        if !self.config.enabled || self.closed.load(Ordering::Acquire) {
            return Some(Admission::Call);
        }
        let mut w = self.window.lock().expect("breaker lock");
        let now = Instant::now();
        let may_probe = match w.phase {
            Phase::Closed => return Some(Admission::Call),
            Phase::Open { until } => now >= until,
            Phase::HalfOpen { probing_since } => now.duration_since(probing_since) >= self.config.cooldown,
        };
        if !may_probe {
            return None;
        }
        w.phase = Phase::HalfOpen { probing_since: now };
        Some(Admission::Probe)
    }

    /// Record how a call that `admit` let through as `admission` ended.
    pub fn record(&self, admission: Admission, failed: bool) {
        if !self.config.enabled {
            return;
        }
        let now = Instant::now();
        let mut w = self.window.lock().expect("breaker lock");
        match w.phase {
            // A call admitted before the breaker opened reports late: ignored.
            Phase::HalfOpen { .. } if admission == Admission::Call => {}
            Phase::HalfOpen { .. } if failed => self.open(&mut w, now),
            Phase::HalfOpen { .. } => {
                *w = Window { phase: Phase::Closed, started: now, calls: 0, failures: 0 };
                self.closed.store(true, Ordering::Release);
            }
            Phase::Closed => {
                if now.duration_since(w.started) > self.config.window {
                    (w.started, w.calls, w.failures) = (now, 0, 0);
                }
                w.calls += 1;
                w.failures += u32::from(failed);
                let ratio = f64::from(w.failures) / f64::from(w.calls);
                if w.calls >= self.config.min_requests && ratio > self.config.failure_ratio {
                    self.open(&mut w, now);
                }
            }
            // A late result (the response phase) of a request admitted before
            // the breaker opened.
            Phase::Open { .. } => {}
        }
    }

    /// Give back an admission whose call never ran the filter (no instance
    /// slot was free): a probe so given back lets the next request probe at
    /// once, instead of after one more cool-down.
    pub fn abandon(&self, admission: Admission) {
        if admission != Admission::Probe {
            return;
        }
        let mut w = self.window.lock().expect("breaker lock");
        if let Phase::HalfOpen { .. } = w.phase {
            w.phase = Phase::Open { until: Instant::now() };
        }
    }

    fn open(&self, w: &mut Window, now: Instant) {
        w.phase = Phase::Open { until: now + self.config.cooldown };
        self.closed.store(false, Ordering::Release);
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    pub fn state(&self) -> BreakerState {
        match self.window.lock().expect("breaker lock").phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How many times this breaker has opened.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn breaker(cooldown: Duration) -> Breaker {
        Breaker::new(BreakerConfig {
            enabled: true,
            failure_ratio: 0.5,
            min_requests: 4,
            window: Duration::from_secs(60),
            cooldown,
        })
    }

    #[test]
    fn opens_past_the_ratio_and_probes_after_the_cooldown() {
        let b = breaker(Duration::from_millis(30));
        for failed in [true, false, true] {
            assert_eq!(b.admit(), Some(Admission::Call));
            b.record(Admission::Call, failed);
        }
        assert_eq!(b.state(), BreakerState::Closed, "too few requests to judge");
        b.record(Admission::Call, true);
        assert_eq!(b.state(), BreakerState::Open, "3 of 4 failed");
        assert_eq!(b.admit(), None);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Some(Admission::Probe), "the probe");
        assert_eq!(b.admit(), None, "one probe at a time");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // A probe that never reports (its request was dropped) does not
        // keep the breaker half-open for ever.
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Some(Admission::Probe), "a new probe after one cool-down");
        // A request admitted before the breaker opened reports late: its
        // result decides nothing.
        b.record(Admission::Call, false);
        assert_eq!(b.state(), BreakerState::HalfOpen, "a late call's result is ignored");
        b.record(Admission::Probe, true);
        assert_eq!(b.state(), BreakerState::Open, "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Some(Admission::Probe));
        // The probe's result decides even after the next probe was let
        // through (behind an upstream slower than the cool-down).
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Some(Admission::Probe));
        b.record(Admission::Probe, false);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.opened(), 2);
    }

    #[test]
    fn a_probe_given_back_lets_the_next_request_probe() {
        let b = breaker(Duration::from_secs(3600));
        for _ in 0..4 {
            b.record(Admission::Call, true);
        }
        assert_eq!(b.admit(), None, "open for an hour");
        // Force the cool-down over, as if an hour had passed.
        b.window.lock().unwrap().phase = Phase::Open { until: Instant::now() };
        assert_eq!(b.admit(), Some(Admission::Probe));
        assert_eq!(b.admit(), None, "one probe at a time");
        b.abandon(Admission::Probe);
        assert_eq!(b.admit(), Some(Admission::Probe), "the next request probes at once");
        // A call given back changes nothing.
        b.abandon(Admission::Call);
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn stays_closed_at_or_under_the_ratio() {
        let b = breaker(Duration::from_secs(1));
        // Every other call fails, the success first: never over half.
        for i in 0..100 {
            b.record(Admission::Call, i % 2 == 1);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
