//! The per-request cost of the Wasm host: one full cycle is instantiate,
//! `on-request`, `on-response`, drop, exactly as the proxy runs it. The
//! `-reused` rows take a parked instance and park it again instead
//! (`reuse_instances = true`).
//!
//! Run with `cargo bench -p cascade --bench filter_cycle` after
//! `scripts/build-filters.sh`; `scripts/bench.sh` runs it as part of the
//! whole harness.

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use cascade::config::{
    FilterEntry, FilterLimits, KeysetConfig, KvStoreConfig, Limits, Location, OnError, RateLimitPolicyConfig,
    SecretSource, UpstreamConfig,
};
use cascade::filters::capabilities::jwt::{Keyset, sign_with_secret};
use cascade::filters::capabilities::kv::KvStores;
use cascade::filters::capabilities::rate_limit::RateLimiters;
use cascade::filters::{
    Capabilities, FilterChain, FilterModule, FilterRuntime, ModuleRegistry, ModuleStore, RequestHead,
};
use cascade::upstream::Upstreams;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pingora::http::{RequestHeader, ResponseHeader};

// The proxy's allocator (src/main.rs), so the host's allocations cost here
// what they cost in the proxy.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Drive a future that (almost) never waits: filter calls run to completion
/// on their fiber unless a guest blocks on WASI I/O.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::yield_now();
    }
}

struct Bench {
    runtime: Arc<FilterRuntime>,
    modules: ModuleRegistry,
    upstreams: Arc<Upstreams>,
    caps: Arc<Capabilities>,
    route: Arc<str>,
    /// A valid token for the demo keyset, so auth takes its full path.
    token: String,
}

impl Bench {
    fn new() -> Self {
        let limits = Limits { max_instances: 1_000, breaker: NO_BREAKER, ..Limits::default() };
        let runtime = FilterRuntime::new(&limits).expect("engine");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release");
        fn build_first<T>(e: cascade::filters::ModuleError) -> T {
            panic!("{e}; build the filters first with scripts/build-filters.sh")
        }
        // Compiled artifacts are cached as on a restart, so a run (or one
        // under valgrind, where Cranelift would take minutes) compiles only
        // what changed.
        let artifacts = dir.join("../../bench/artifacts");
        let store =
            ModuleStore::open(&artifacts, runtime.engine()).unwrap_or_else(|e| panic!("{}: {e}", artifacts.display()));
        let mut modules =
            ModuleRegistry::load_dir(&runtime, &dir, Some(&store), &Default::default()).unwrap_or_else(build_first);
        // One fixture, for the host-call benchmark; the others are
        // deliberately invalid.
        let misbehave = dir.join("../../fixtures/wasm32-wasip2/release/misbehave.wasm");
        let bytes = std::fs::read(&misbehave).unwrap_or_else(|e| panic!("{}: {e}", misbehave.display()));
        let misbehave = FilterModule::compile(&runtime, "misbehave", &bytes, Some(&store));
        modules.insert(misbehave.unwrap_or_else(build_first));
        let mut groups = std::collections::BTreeMap::new();
        groups.insert(
            "origin".to_string(),
            UpstreamConfig {
                name: "origin".into(),
                servers: vec!["127.0.0.1:9000".parse().unwrap()],
                tiers: Vec::new(),
                balance: Default::default(),
                connect_timeout: Duration::from_secs(1),
                read_timeout: Duration::from_secs(1),
                fail_timeout: Duration::from_secs(10),
                tls: None,
                failover_statuses: Vec::new(),
                max_attempts: 1,
                health_check: None,
                names: None,
            },
        );
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let keyset = KeysetConfig {
            name: "demo".into(),
            algorithms: vec!["HS256".into()],
            secret: Some(SecretSource::File(root.join("conf/demo-jwt-secret"))),
            public_key_files: vec![],
            jwks_file: None,
            issuer: Some("cascade-demo".into()),
            audience: vec!["demo-api".into()],
            leeway: Duration::from_secs(30),
            cache_size: 4096,
            at: location(),
        };
        let far_future = 4_000_000_000u64;
        let claims = serde_json::json!({"sub": "alice", "jti": "bench-1", "scope": "read", "exp": far_future});
        let token = sign_with_secret(&keyset, claims).expect("sign the bench token");
        // A policy that never refuses, so every cycle does the same work.
        let policy = RateLimitPolicyConfig {
            name: "demo".into(),
            burst: u32::MAX,
            interval: Duration::from_nanos(1),
            max_keys: 100_000,
        };
        let caps = Capabilities {
            rate_limits: RateLimiters::new([policy].iter()),
            kv_stores: revocation_store(),
            keysets: [("demo".to_string(), Keyset::build(&keyset).expect("keyset"))].into(),
            patterns: Default::default(),
            upstream_groups: groups.keys().cloned().collect(),
            fetch_counts: Default::default(),
            cdn_loop_member: None,
        };
        Self {
            runtime,
            modules,
            upstreams: Upstreams::start(&groups, None),
            caps: Arc::new(caps),
            route: Arc::from("bench"),
            token,
        }
    }

    /// A chain of `links`, each a fresh instance per request unless
    /// `reuse_instances`.
    fn chain(&self, links: &[(&str, &str)], reuse_instances: bool) -> FilterChain {
        let entries: Vec<FilterEntry> = links
            .iter()
            .map(|(module, config)| FilterEntry {
                module: module.to_string(),
                on_error: OnError::FailClosed,
                config_json: Arc::from(*config),
                limits: FilterLimits {
                    timeout: Duration::from_millis(50),
                    memory_bytes: 16 << 20,
                    failure_status: 500,
                    breaker: NO_BREAKER,
                    output: Default::default(),
                },
                reuse_instances,
                outbound: Default::default(),
                at: location(),
            })
            .collect();
        block_on(FilterChain::build(&self.runtime, &self.modules, &self.caps, "bench", &entries, None)).expect("chain")
    }

    /// The heads of one request and of its response, as the proxy has them
    /// before the filters run: it parses and drops them with or without
    /// filters, so the benchmarks build them outside the timed cycle.
    fn heads(&self) -> (RequestHeader, ResponseHeader) {
        let mut header = RequestHeader::build("GET", b"/api/users?page=2", None).unwrap();
        header.insert_header("host", "example.com").unwrap();
        header.insert_header("user-agent", "bench").unwrap();
        header.insert_header("x-debug", "1").unwrap();
        header.insert_header("authorization", format!("Bearer {}", self.token)).unwrap();
        (header, ResponseHeader::build(200, Some(4)).unwrap())
    }

    /// What the proxy hands a chain besides the request's head; it builds
    /// this for routes with filters only, so inside the timed cycle.
    fn head(&self, header: RequestHeader) -> RequestHead {
        RequestHead {
            header,
            id: Arc::from("0000000000000000"),
            client_ip: Arc::from("127.0.0.1"),
            route_name: self.route.clone(),
            upstream: "origin".into(),
            upstreams: self.upstreams.clone(),
            replay: false,
            response_edits: Default::default(),
        }
    }

    /// One request through `chain`: both phases, then every instance
    /// dropped. The heads come back, for criterion to drop outside the
    /// timing, as the proxy would drop them without filters.
    fn cycle(
        &self,
        chain: &FilterChain,
        (header, response): (RequestHeader, ResponseHeader),
    ) -> (RequestHeader, ResponseHeader) {
        let (head, mut run, _outcome) = block_on(chain.run_request(&self.runtime, self.head(header)));
        let (response, result) = block_on(run.run_response(&self.runtime, response, "0000000000000000"));
        result.expect("filters succeed");
        (head.header, response)
    }

    /// Time `chain`'s cycle, with heads built beforehand in small batches,
    /// so that they are still in the cache when their cycle runs.
    fn time(&self, b: &mut criterion::Bencher, chain: &FilterChain) {
        b.iter_batched(|| self.heads(), |heads| self.cycle(chain, heads), BatchSize::NumIterations(64))
    }
}

/// The breaker is off: every cycle runs the filter.
const NO_BREAKER: cascade::config::BreakerConfig = cascade::config::BreakerConfig {
    enabled: false,
    failure_ratio: 1.0,
    min_requests: 1,
    window: Duration::from_secs(1),
    cooldown: Duration::from_secs(1),
};

fn location() -> Location {
    Location { file: "bench".into(), line: 1, key: "route.filters.module".into() }
}

const AUTH: &str = r#"{"keyset":"demo","required_scopes":["read"],"forward_claims":{"sub":"x-user-id"}}"#;
/// `AUTH`, also looking the token's `jti` and `sub` up in a store of
/// revoked tokens (two `kv.get` calls per request).
const AUTH_REVOCATION: &str = r#"{"keyset":"demo","required_scopes":["read"],"forward_claims":{"sub":"x-user-id"},"revocation_store":"revoked","revoked_claims":["jti","sub"]}"#;

/// A store of 10,000 revoked tokens, none of them the bench's.
fn revocation_store() -> KvStores {
    let at = Location { file: PathBuf::from("bench"), line: 1, key: "kv_stores.revoked".into() };
    let config = KvStoreConfig {
        name: "revoked".into(),
        max_keys: 10_000,
        max_value_bytes: 64,
        filters_may_write: false,
        file: None,
        at,
    };
    let stores = KvStores::carried_over([config].iter(), None).expect("a store without a file");
    let store = stores.store("revoked").expect("configured");
    for n in 0..10_000 {
        store.set(&format!("jti:revoked-{n}"), String::new(), None).expect("room for it");
    }
    stores
}
const RATE_LIMIT: &str = r#"{"policy":"demo","key":"header:x-user-id"}"#;
const AB_TEST: &str = r#"{"experiment":"checkout","key":"header:x-user-id","variants":[{"name":"control","weight":50},{"name":"new","weight":50}]}"#;

const REWRITE: &str = r#"{"strip_prefix":"/api","add_prefix":"/v2","request_headers":{"set":{"x-edge":"cascade"},"remove":["x-debug"]},"response_headers":{"set":{"x-served-by":"cascade"}}}"#;

fn filter_cycle(c: &mut Criterion) {
    let bench = Bench::new();
    let mut group = c.benchmark_group("cycle");
    group.measurement_time(Duration::from_secs(5));

    // The chain machinery's own cost, with no filter in it (the proxy skips
    // even that on a route without filters).
    let empty = FilterChain::default();
    group.bench_function("no-filter", |b| bench.time(b, &empty));

    // auth forwards x-user-id for the others; alone, they key on the IP.
    // (row, module, config)
    let singles = [
        ("noop", "noop", "{}"),
        ("rewrite", "rewrite", REWRITE),
        ("auth", "auth", AUTH),
        ("auth-revocation", "auth", AUTH_REVOCATION),
        ("rate_limit", "rate_limit", RATE_LIMIT),
        ("ab_test", "ab_test", AB_TEST),
    ];
    // The demo chain: auth -> rate_limit -> ab_test -> rewrite.
    let four = [("auth", AUTH), ("rate_limit", RATE_LIMIT), ("ab_test", AB_TEST), ("rewrite", REWRITE)];
    // Each with a fresh instance per request, then with instances reused.
    for (suffix, reuse) in [("", false), ("-reused", true)] {
        for (row, module, config) in singles {
            let chain = bench.chain(&[(module, config)], reuse);
            group.bench_function(format!("{row}{suffix}"), |b| bench.time(b, &chain));
        }
        let chain = bench.chain(&four, reuse);
        group.bench_function(format!("chain-of-four{suffix}"), |b| bench.time(b, &chain));
    }
    group.finish();

    // One guest-to-host call: a filter reading a header 1000 times, minus
    // nothing; criterion reports the time per read through the throughput.
    let mut group = c.benchmark_group("host-call");
    let reads = bench.chain(&[("misbehave", r#"{"header_reads":1000}"#)], false);
    group.throughput(Throughput::Elements(1000));
    group.bench_function("header-x1000", |b| bench.time(b, &reads));
    group.finish();
}

criterion_group!(benches, filter_cycle);
criterion_main!(benches);
