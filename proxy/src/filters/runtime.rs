//! The one `Engine` and `Linker` every filter shares, and the epoch ticker.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings;
use super::host::FilterHost;
use crate::config::Limits;

/// The epoch advances every tick; a call that runs past its deadline is
/// stopped at the next tick. The tick is a tenth of the shortest filter
/// deadline in the serving config, within these bounds, so a call overruns
/// by at most 10% of that deadline (or 1 ms), and the ticker wakes no more
/// often than that needs: each wake-up is a context switch, on a busy proxy
/// on a core the workers use (about 1 µs per request at a 1 ms tick;
/// docs/BENCHMARKS.md, session 9).
const FINEST_TICK: Duration = Duration::from_millis(1);
const COARSEST_TICK: Duration = Duration::from_millis(10);

/// How often a parked ticker wakes on its own, to notice that its engine is
/// gone and exit (a wake-up for a new instance is never lost: see below).
const IDLE_RECHECK: Duration = Duration::from_millis(100);

/// The Wasm engine and the host functions linked into every filter.
pub struct FilterRuntime {
    engine: Engine,
    /// Components compiled by Cranelift since start (not loaded from cache).
    compilations: AtomicU64,
    linker: Linker<FilterHost>,
    max_memory_bytes: u64,
    /// Instances serving a request. Ticks only matter while some instance
    /// runs (there is nothing to interrupt otherwise), so the ticker parks
    /// when the count is zero and the first instance to open wakes it: an
    /// idle proxy, or one serving only routes without filters, pays for no
    /// wake-ups.
    live: Arc<AtomicI64>,
    ticker: Thread,
    tick: EpochTick,
    /// Instances parked between requests for reuse (`filters::reuse`).
    idle: Arc<AtomicI64>,
    /// Each idle instance holds a pool slot, so at most this many may sit
    /// idle, a quarter of `max_instances`: parked instances can never take
    /// the slots that requests on other routes need.
    idle_budget: i64,
}

/// The current epoch tick, shared by the ticker and the stores' deadline
/// checks.
#[derive(Clone)]
pub struct EpochTick(Arc<AtomicU64>);

impl EpochTick {
    fn for_deadline(shortest: Duration) -> Duration {
        (shortest / 10).clamp(FINEST_TICK, COARSEST_TICK)
    }

    pub fn get(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, tick: Duration) {
        self.0.store(tick.as_micros() as u64, Ordering::Relaxed);
    }

    /// Ticks until `left` has passed. One tick is added because the next
    /// tick may come right after the count starts.
    pub fn ticks_for(&self, left: Duration) -> u64 {
        (left.as_micros() / self.get().as_micros().max(1)) as u64 + 1
    }
}

/// Counts one instance in a gauge (live or idle) until it is dropped.
pub struct InstanceCount(Arc<AtomicI64>);

impl Drop for InstanceCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl FilterRuntime {
    /// Build the engine for `limits` and start the epoch ticker.
    pub fn new(limits: &Limits) -> wasmtime::Result<Arc<Self>> {
        let max_memory_bytes = limits.filter_memory_bytes.clamp(1 << 20, crate::config::MAX_FILTER_MEMORY_BYTES);
        let instances = limits.max_instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            // A Rust component holds a few core instances (the guest and its
            // shims) but only one or two memories and tables.
            .total_core_instances(instances.saturating_mul(4))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(2))
            // What one component may take of those totals, so that a heavy
            // (or hostile) component is refused at load rather than using
            // up the slots of every other route's filters: at most twice
            // the tables and four times the core instances a Rust filter
            // averages, and as many memories.
            .max_core_instances_per_component(16)
            .max_memories_per_component(2)
            .max_tables_per_component(4)
            .max_memory_size(max_memory_bytes as usize)
            // Reusing a slot resets the pages a request dirtied back to the
            // module's image instead of unmapping them: PAGEMAP_SCAN (Linux
            // 6.7+) finds the dirty pages, so the cost is per page touched and
            // the next request takes no page faults. A Rust guest's 1 MiB
            // shadow stack and first heap pages sit below 2 MiB.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            // A fiber stack is held only while a call runs, not between phases.
            .total_stacks(instances.min(1_000))
            .async_stack_keep_resident(16 << 10);

        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .memory_init_cow(true)
            .epoch_interruption(true)
            // Reserve only the largest allowed memory per slot (plus a guard),
            // so ten thousand slots fit comfortably in the address space.
            .memory_reservation(max_memory_bytes)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(0)
            .max_wasm_stack(512 << 10)
            .async_stack_size(1 << 20);
        // `perf` names JIT-compiled guest functions through /tmp/perf-<pid>.map
        // (scripts/bench.sh sets this for PERF_ROW profiles).
        if std::env::var("CASCADE_PERF_MAP").is_ok_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        // Sandboxed WASI: no preopened directories, no network, no environment.
        // It exists because language runtimes expect stdio, clocks and random.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::Filter::add_to_linker::<FilterHost, wasmtime::component::HasSelf<FilterHost>>(&mut linker, |host| {
            host
        })?;

        let live = Arc::new(AtomicI64::new(0));
        let tick = EpochTick(Arc::new(AtomicU64::new(0)));
        tick.set(EpochTick::for_deadline(limits.filter_timeout));
        let (weak_engine, ticker_live, ticker_tick) = (engine.weak(), live.clone(), tick.clone());
        let ticker = std::thread::Builder::new()
            .name("cascade-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak_engine.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    // A wake-up between this load and the park is not lost:
                    // it leaves the park token set.
                    if ticker_live.load(Ordering::Acquire) == 0 {
                        std::thread::park_timeout(IDLE_RECHECK);
                    } else {
                        std::thread::sleep(ticker_tick.get());
                    }
                }
            })
            .map_err(wasmtime::Error::from)?;
        let ticker = ticker.thread().clone();

        Ok(Arc::new(Self {
            engine,
            linker,
            max_memory_bytes,
            compilations: Default::default(),
            live,
            ticker,
            tick,
            idle: Default::default(),
            idle_budget: i64::from(instances / 4),
        }))
    }

    /// Count an instance live while it serves a request, waking the epoch
    /// ticker if it was the only one.
    pub fn instance_opened(&self) -> InstanceCount {
        if self.live.fetch_add(1, Ordering::AcqRel) == 0 {
            self.ticker.unpark();
        }
        InstanceCount(self.live.clone())
    }

    /// Count an instance idle, or `None` when the idle budget is spent (the
    /// instance is then dropped and its slot returned).
    pub fn instance_parked(&self) -> Option<InstanceCount> {
        self.idle
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |idle| (idle < self.idle_budget).then_some(idle + 1))
            .ok()
            .map(|_| InstanceCount(self.idle.clone()))
    }

    /// How many filter instances are serving a request.
    pub fn live_instances(&self) -> i64 {
        self.live.load(Ordering::Relaxed)
    }

    /// How many filter instances are parked for reuse; each holds a pool slot.
    pub fn idle_instances(&self) -> i64 {
        self.idle.load(Ordering::Relaxed)
    }

    pub fn count_compilation(&self) {
        self.compilations.fetch_add(1, Ordering::Relaxed);
    }

    /// Components compiled since start; cached artifacts do not count.
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn linker(&self) -> &Linker<FilterHost> {
        &self.linker
    }

    /// The largest memory cap a chain entry can get.
    pub fn max_memory_bytes(&self) -> u64 {
        self.max_memory_bytes
    }

    pub fn tick(&self) -> &EpochTick {
        &self.tick
    }

    /// Fit the tick to the shortest filter deadline of the config that
    /// now serves. A call armed under the previous tick is still stopped on
    /// time: deadlines are instants, and the tick only says how often they
    /// are checked (`chain::arm_deadline`).
    pub fn fit_tick_to(&self, shortest_deadline: Duration) {
        self.tick.set(EpochTick::for_deadline(shortest_deadline));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tick_is_a_tenth_of_the_shortest_deadline_within_bounds() {
        assert_eq!(EpochTick::for_deadline(Duration::from_millis(50)), Duration::from_millis(5));
        assert_eq!(EpochTick::for_deadline(Duration::from_millis(5)), FINEST_TICK);
        assert_eq!(EpochTick::for_deadline(Duration::from_secs(30)), COARSEST_TICK);

        let tick = EpochTick(Arc::new(AtomicU64::new(0)));
        tick.set(Duration::from_millis(5));
        // Ten whole ticks, and one for the tick that may come right away.
        assert_eq!(tick.ticks_for(Duration::from_millis(50)), 11);
        assert_eq!(tick.ticks_for(Duration::from_millis(3)), 1);
    }
}
