//! Prometheus metrics: what exists so far is requests by route and status,
//! filter failures by module and kind, module swaps and compilations.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::filters::FilterRuntime;
use crate::filters::host::live_instances;
use crate::filters::module::live_modules;

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    filter_failures: Mutex<BTreeMap<(String, &'static str), u64>>,
    module_swaps: AtomicU64,
    reloads: AtomicU64,
}

impl Metrics {
    pub fn record_request(&self, route: &str, status: u16) {
        let mut requests = self.requests.lock().expect("metrics lock");
        match requests.get_mut(&(route.to_string(), status)) {
            Some(n) => *n += 1,
            None => {
                requests.insert((route.to_string(), status), 1);
            }
        }
    }

    pub fn record_filter_failure(&self, module: &str, kind: &'static str) {
        *self.filter_failures.lock().expect("metrics lock").entry((module.to_string(), kind)).or_insert(0) += 1;
    }

    pub fn record_swap(&self) {
        self.module_swaps.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_reload(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, runtime: &FilterRuntime) -> String {
        let mut out = String::new();
        out.push_str("# HELP cascade_requests_total Requests answered, by route and status.\n");
        out.push_str("# TYPE cascade_requests_total counter\n");
        for ((route, status), n) in self.requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "cascade_requests_total{{route=\"{}\",status=\"{status}\"}} {n}", escape(route));
        }
        out.push_str("# HELP cascade_filter_failures_total Filter traps, timeouts and memory-cap hits.\n");
        out.push_str("# TYPE cascade_filter_failures_total counter\n");
        for ((module, kind), n) in self.filter_failures.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "cascade_filter_failures_total{{module=\"{}\",kind=\"{kind}\"}} {n}", escape(module));
        }
        let counters = [
            ("cascade_module_swaps_total", "Module versions made active.", self.module_swaps.load(Ordering::Relaxed)),
            ("cascade_config_reloads_total", "Successful config reloads.", self.reloads.load(Ordering::Relaxed)),
            ("cascade_module_compilations_total", "Components compiled (not from cache).", runtime.compilations()),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let gauges = [
            ("cascade_filter_instances_live", "Filter instances alive (each holds a pool slot).", live_instances()),
            ("cascade_module_versions_live", "Compiled module versions alive, pinned or current.", live_modules()),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        out
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
