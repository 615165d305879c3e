//! Prometheus metrics: requests by route and status, filter failures and
//! latency, cache outcomes and size, upstream attempts and failovers by tier,
//! servers up and down by tier, filters' fetches, module swaps and
//! compilations.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cache::EdgeCache;
use crate::control::BreakerReport;
use crate::filters::Capabilities;
use crate::filters::breaker::BreakerState;
use crate::filters::module::live_modules;
use crate::filters::{FilterRuntime, FilterTiming};
use crate::upstream::Upstreams;

/// Series keyed by a name label (route or module) and a second label. The
/// name is looked up by `&str`, so recording allocates only for a new series.
#[derive(Debug)]
struct Series<K, V>(Mutex<BTreeMap<String, BTreeMap<K, V>>>);

impl<K, V> Default for Series<K, V> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<K: Ord + Copy, V: Default> Series<K, V> {
    fn update(&self, name: &str, label: K, f: impl FnOnce(&mut V)) {
        Self::with_value(&mut self.0.lock().expect("metrics lock"), name, label, f);
    }

    /// `update` for several values under one lock (a request's filter
    /// timings, say, rather than a lock for each).
    fn update_each<'a, T>(&self, items: impl IntoIterator<Item = (&'a str, K, T)>, mut f: impl FnMut(&mut V, T)) {
        let mut series = self.0.lock().expect("metrics lock");
        for (name, label, item) in items {
            Self::with_value(&mut series, name, label, |value| f(value, item));
        }
    }

    /// Run `f` on one value. The name is looked up by `&str`, so only a new
    /// series allocates it.
    fn with_value(series: &mut BTreeMap<String, BTreeMap<K, V>>, name: &str, label: K, f: impl FnOnce(&mut V)) {
        match series.get_mut(name) {
            Some(by_label) => f(by_label.entry(label).or_default()),
            None => f(series.entry(name.to_string()).or_default().entry(label).or_default()),
        }
    }

    /// Every (name, label, value), sorted.
    fn for_each(&self, mut f: impl FnMut(&str, K, &V)) {
        for (name, by_label) in self.0.lock().expect("metrics lock").iter() {
            for (label, value) in by_label {
                f(name, *label, value);
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Series<u16, u64>,
    filter_failures: Series<&'static str, u64>,
    filter_latency: Series<&'static str, Histogram>,
    cache_results: Series<&'static str, u64>,
    upstream_attempts: Series<&'static str, u64>,
    module_swaps: AtomicU64,
    reloads: AtomicU64,
    /// Background refreshes of stale entries: replays no client waits on,
    /// kept out of the requests and cache outcomes.
    cache_refreshes: AtomicU64,
}

impl Metrics {
    pub fn record_request(&self, route: &str, status: u16) {
        self.requests.update(route, status, |n| *n += 1);
    }

    pub fn record_filter_failure(&self, module: &str, kind: &'static str) {
        self.filter_failures.update(module, kind, |n| *n += 1);
    }

    /// One request's filter timings, under one lock.
    pub fn record_filter_latencies(&self, timings: &[FilterTiming]) {
        let items = timings.iter().map(|t| (&*t.module, t.phase, t.elapsed));
        self.filter_latency.update_each(items, Histogram::observe);
    }

    /// How a request on `route` used the cache (`cache::outcome`).
    pub fn record_cache(&self, route: &str, outcome: &'static str) {
        self.cache_results.update(route, outcome, |n| *n += 1);
    }

    /// An upstream attempt to `tier`: `sent`, `retry` when a connection
    /// failed and another server of the tier was tried, or `failover` when
    /// the request moved on to the next tier.
    pub fn record_upstream(&self, tier: &str, outcome: &'static str) {
        self.upstream_attempts.update(tier, outcome, |n| *n += 1);
    }

    pub fn record_swap(&self) {
        self.module_swaps.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_reload(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_cache_refresh(&self) {
        self.cache_refreshes.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(
        &self,
        runtime: &FilterRuntime,
        cache: &EdgeCache,
        breakers: &[BreakerReport],
        upstreams: &Upstreams,
        caps: &Capabilities,
    ) -> String {
        let mut out = String::new();
        out.push_str("# HELP cascade_requests_total Requests answered, by route and status.\n");
        out.push_str("# TYPE cascade_requests_total counter\n");
        self.requests.for_each(|route, status, n| {
            let _ = writeln!(out, "cascade_requests_total{{route=\"{}\",status=\"{status}\"}} {n}", escape(route));
        });
        out.push_str("# HELP cascade_filter_failures_total Filter traps, timeouts and memory-cap hits.\n");
        out.push_str("# TYPE cascade_filter_failures_total counter\n");
        self.filter_failures.for_each(|module, kind, n| {
            let _ = writeln!(out, "cascade_filter_failures_total{{module=\"{}\",kind=\"{kind}\"}} {n}", escape(module));
        });
        out.push_str(
            "# HELP cascade_filter_duration_seconds Time per filter call (instantiation included in on-request).\n",
        );
        out.push_str("# TYPE cascade_filter_duration_seconds histogram\n");
        self.filter_latency.for_each(|module, phase, h| {
            let labels = format!("module=\"{}\",phase=\"{phase}\"", escape(module));
            let mut cumulative = 0;
            for (bound, n) in BUCKET_BOUNDS_US.iter().zip(&h.buckets) {
                cumulative += n;
                let le = *bound as f64 / 1e6;
                let _ = writeln!(out, "cascade_filter_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(out, "cascade_filter_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "cascade_filter_duration_seconds_sum{{{labels}}} {}", h.sum_us as f64 / 1e6);
            let _ = writeln!(out, "cascade_filter_duration_seconds_count{{{labels}}} {}", h.count);
        });
        out.push_str("# HELP cascade_cache_requests_total Requests by route and cache outcome (hit, stale, miss, expired, revalidated, bypass, uncacheable).\n");
        out.push_str("# TYPE cascade_cache_requests_total counter\n");
        self.cache_results.for_each(|route, result, n| {
            let _ =
                writeln!(out, "cascade_cache_requests_total{{route=\"{}\",result=\"{result}\"}} {n}", escape(route));
        });
        out.push_str("# HELP cascade_upstream_attempts_total Upstream attempts by tier: sent, retry (a connection failed; another server of the tier was tried) and failover (moved on to the next tier).\n");
        out.push_str("# TYPE cascade_upstream_attempts_total counter\n");
        self.upstream_attempts.for_each(|tier, outcome, n| {
            let _ =
                writeln!(out, "cascade_upstream_attempts_total{{tier=\"{}\",outcome=\"{outcome}\"}} {n}", escape(tier));
        });
        out.push_str("# HELP cascade_upstream_servers Servers of each tier: up (in rotation) or down (failed its health checks, or out for fail_timeout_ms after a failed connection). A host name counts once per address it resolves to now.\n");
        out.push_str("# TYPE cascade_upstream_servers gauge\n");
        for tier in upstreams.groups().filter(|g| g.config.tiers.is_empty()) {
            let servers = tier.servers();
            let up = servers.iter().filter(|s| s.in_rotation()).count();
            for (state, n) in [("up", up), ("down", servers.len() - up)] {
                let _ =
                    writeln!(out, "cascade_upstream_servers{{tier=\"{}\",state=\"{state}\"}} {n}", escape(tier.name()));
            }
        }
        out.push_str("# HELP cascade_filter_breaker_open Whether a chain entry's circuit breaker is open (1), half-open (0.5) or closed (0).\n");
        out.push_str("# TYPE cascade_filter_breaker_open gauge\n");
        for b in breakers {
            let value = match b.state {
                BreakerState::Closed => "0",
                BreakerState::HalfOpen => "0.5",
                BreakerState::Open => "1",
            };
            let _ = writeln!(out, "cascade_filter_breaker_open{{{}}} {value}", breaker_labels(b));
        }
        out.push_str("# HELP cascade_filter_breaker_opens_total Times a chain entry's circuit breaker opened.\n");
        out.push_str("# TYPE cascade_filter_breaker_opens_total counter\n");
        for b in breakers {
            let _ = writeln!(out, "cascade_filter_breaker_opens_total{{{}}} {}", breaker_labels(b), b.opened);
        }
        out.push_str(
            "# HELP cascade_kv_keys Keys held by each key-value store (expired ones not yet dropped included).\n",
        );
        out.push_str("# TYPE cascade_kv_keys gauge\n");
        for store in caps.kv_stores.iter() {
            let _ = writeln!(out, "cascade_kv_keys{{store=\"{}\"}} {}", escape(&store.config.name), store.len());
        }
        out.push_str("# HELP cascade_filter_fetches_total Requests filters sent to upstream groups (outbound.fetch), by outcome: answered (any status), refused (by the host, before sending), unreachable, timeout, bad-response or too-large (an answer past 1 MiB).\n");
        out.push_str("# TYPE cascade_filter_fetches_total counter\n");
        caps.fetch_counts.for_each(|module, group, outcome, n| {
            let (module, group) = (escape(module), escape(group));
            let labels = format!("module=\"{module}\",upstream=\"{group}\",outcome=\"{outcome}\"");
            let _ = writeln!(out, "cascade_filter_fetches_total{{{labels}}} {n}");
        });
        let counters = [
            ("cascade_module_swaps_total", "Module versions made active.", self.module_swaps.load(Ordering::Relaxed)),
            ("cascade_config_reloads_total", "Successful config reloads.", self.reloads.load(Ordering::Relaxed)),
            (
                "cascade_cache_refreshes_total",
                "Background refreshes of stale entries (not counted as requests).",
                self.cache_refreshes.load(Ordering::Relaxed),
            ),
            ("cascade_module_compilations_total", "Components compiled (not from cache).", runtime.compilations()),
            ("cascade_cache_evictions_total", "Cache entries evicted to stay within max_size_mb.", cache.evictions()),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let gauges = [
            (
                "cascade_requests_in_flight",
                "Requests being served, from their head to their log line (background refreshes included).",
                crate::drain::requests_in_flight() as i64,
            ),
            (
                "cascade_filter_instances_live",
                "Filter instances serving a request (each holds a pool slot).",
                runtime.live_instances(),
            ),
            (
                "cascade_filter_instances_idle",
                "Filter instances parked for reuse (each holds a pool slot).",
                runtime.idle_instances(),
            ),
            ("cascade_module_versions_live", "Compiled module versions alive, pinned or current.", live_modules()),
            ("cascade_cache_size_bytes", "Bytes held by the edge cache.", cache.size_bytes() as i64),
            ("cascade_cache_entries", "Entries held by the edge cache.", cache.entries() as i64),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        let name = "cascade_filter_epoch_tick_seconds";
        let help = "How often filter deadlines are checked: a tenth of the shortest one configured, 1 to 10 ms.";
        let tick = runtime.tick().get().as_secs_f64();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {tick}");
        out
    }
}

/// Upper bounds of the latency buckets, in microseconds.
const BUCKET_BOUNDS_US: [u64; 10] = [10, 25, 50, 100, 250, 500, 1_000, 5_000, 25_000, 100_000];

#[derive(Debug, Default)]
struct Histogram {
    /// Counts per bucket (not cumulative); the rest is in `count` only.
    buckets: [u64; BUCKET_BOUNDS_US.len()],
    count: u64,
    sum_us: u64,
}

impl Histogram {
    fn observe(&mut self, elapsed: Duration) {
        let us = elapsed.as_micros() as u64;
        if let Some(i) = BUCKET_BOUNDS_US.iter().position(|bound| us <= *bound) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_us += us;
    }
}

/// A chain entry's labels: its route, its place in the chain and its module.
fn breaker_labels(b: &BreakerReport) -> String {
    format!("route=\"{}\",position=\"{}\",module=\"{}\"", escape(&b.route), b.position, escape(&b.module))
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
