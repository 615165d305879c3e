//! Fuzzing, property-based: the parsers that take input from outside the
//! process must never panic, and must keep their promises on any input.
//!
//! - the config parser (`config::load`) on mutated and generated TOML;
//! - path normalization and the route matcher on hostile paths and hosts;
//! - admin upload validation (`FilterModule::compile`) on garbage and on
//!   mutated real components.
//!
//! `scripts/test.sh` (and so CI) runs a short smoke of each. A long run:
//!
//! ```sh
//! PROPTEST_CASES=100000 cargo test --release -p cascade --test fuzz
//! ```
//!
//! A failure prints the minimal input that broke the property; proptest keeps
//! it in `tests/fuzz/proptest-regressions/` so it is tried first next time.

use std::path::Path;
use std::sync::OnceLock;

use cascade::config::{self, Limits, RouteConfig};
use cascade::filters::{FilterChain, FilterModule, FilterRuntime};
use cascade::route::{HostPattern, Route, RouteTable, normalize};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

/// Cases per property: `PROPTEST_CASES` for a long run with random inputs;
/// otherwise a smoke with a fixed seed, so that CI is repeatable and a new
/// finding comes from a long run, not from a CI coin toss.
fn cases(smoke: u32) -> ProptestConfig {
    let long: Option<u32> = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok());
    let rng_seed = if long.is_some() { RngSeed::Random } else { RngSeed::Fixed(0x0c45_cade) };
    ProptestConfig { cases: long.unwrap_or(smoke), failure_persistence: None, rng_seed, ..ProptestConfig::default() }
}

/// Path-ish strings: separators, dots, escapes (good and bad) and text.
fn hostile_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just("//".to_string()),
        Just(".".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2F".to_string()),
        Just("%5c".to_string()),
        Just("%00".to_string()),
        Just("%".to_string()),
        Just("%zz".to_string()),
        Just("%41".to_string()),
        Just("\\".to_string()),
        Just(";".to_string()),
        "[a-zA-Z0-9_~-]{1,6}",
        "\\PC{1,3}",
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|parts| format!("/{}", parts.concat()))
}

proptest! {
    #![proptest_config(cases(2_000))]

    #[test]
    fn normalized_paths_are_canonical(raw in hostile_path()) {
        if let Ok(once) = normalize::path(&raw) {
            // Idempotent: normalizing again changes nothing.
            let twice = normalize::path(&once).unwrap().into_owned();
            prop_assert_eq!(twice.as_str(), once.as_ref());
            prop_assert!(once.starts_with('/'));
            prop_assert!(!once.contains("//"), "{}", once);
            for segment in once.split('/') {
                // Nor one that an origin dropping `;` parameters reads as one.
                let base = segment.split(';').next().unwrap_or_default();
                prop_assert!(base != "." && base != "..", "{}", once);
            }
            let lower = once.to_ascii_lowercase();
            prop_assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%00") && !once.contains('\\'));
        }
    }

    #[test]
    fn any_string_is_a_path_or_a_clear_error(raw in "\\PC{0,64}") {
        let _ = normalize::path(&raw);
        let _ = normalize::valid_host(&raw);
        let _ = normalize::host(&raw);
    }

    #[test]
    fn the_route_matched_is_a_segment_prefix_of_the_path(raw in hostile_path(), host in "[a-zA-Z0-9.:-]{0,20}") {
        let table = route_table();
        let Ok(path) = normalize::path(&raw) else { return Ok(()) };
        // A prefix covers a path on a segment boundary; one ending in `/`
        // also covers the path without it.
        let covers = |prefix: &str, path: &str| {
            path == prefix
                || path.strip_prefix(prefix).is_some_and(|rest| prefix.ends_with('/') || rest.starts_with('/'))
                || (prefix.len() > 1 && prefix.strip_suffix('/') == Some(path))
        };
        if let Some(route) = table.find(&normalize::host(&host), &path) {
            let prefix = route.config.path_prefix.as_str();
            prop_assert!(covers(prefix, &path), "{} matched {}", path, prefix);
            // No longer prefix in the table also covers it, but one that is
            // the path with a `/` after it, which a route for the path beats.
            for other in table.routes() {
                let p = other.config.path_prefix.as_str();
                let beaten = prefix == path.as_ref() && p.strip_suffix('/') == Some(path.as_ref());
                let longer_match = p.len() > prefix.len()
                    && other.config.host.to_string() == route.config.host.to_string()
                    && covers(p, &path)
                    && !beaten;
                prop_assert!(!longer_match, "{} matched {} but {} is longer", path, prefix, p);
            }
        }
    }
}

fn route_table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let routes = [
            ("*", "/"),
            ("*", "/api"),
            ("*", "/api/v2"),
            ("*", "/api/v2/"),
            ("*", "/static/"),
            ("*.example.com", "/admin"),
        ];
        let routes = routes
            .iter()
            .enumerate()
            .map(|(i, (host, prefix))| {
                let config = RouteConfig {
                    name: format!("r{i}"),
                    host: HostPattern::parse(host).unwrap(),
                    path_prefix: prefix.to_string(),
                    upstream: "origin".into(),
                    filters: vec![],
                    cache: Default::default(),
                    at: config::Location { file: "fuzz.toml".into(), line: 1, key: "route.name".into() },
                };
                Route::new(config, FilterChain::default())
            })
            .collect();
        RouteTable::build(routes).unwrap()
    })
}

const VALID_MAIN: &str = r#"routes = ["routes/*.toml"]
[server]
listen = "127.0.0.1:8080"
[modules]
dir = "modules"
[limits]
filter_timeout_ms = 50
[upstreams.origin]
servers = ["127.0.0.1:9000"]
[upstreams.edge]
tiers = ["origin"]
[cache]
max_size_mb = 16
"#;

const VALID_ROUTES: &str = r#"[[route]]
name = "a"
path_prefix = "/a"
upstream = "edge"
[route.cache]
ttl_secs = 5
[[route.filters]]
module = "rewrite"
on_error = "fail-open"
config = { strip_prefix = "/a" }
"#;

/// Load `main` and `routes` from a temp dir. Ok or Err, never a panic; an
/// error names a file.
fn load(main: &str, routes: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("routes")).unwrap();
    std::fs::write(dir.path().join("cascade.toml"), main).unwrap();
    std::fs::write(dir.path().join("routes/r.toml"), routes).unwrap();
    match config::load(&dir.path().join("cascade.toml")) {
        Ok(_) => Ok(()),
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains(".toml"), "an error that names no file: {message}");
            Err(message)
        }
    }
}

/// Mutations of a valid file: a byte replaced, removed or inserted.
fn mutated(text: &'static str) -> impl Strategy<Value = String> {
    let len = text.len();
    proptest::collection::vec((0..len, 0u8..3, proptest::char::any()), 1..4).prop_map(move |edits| {
        let mut chars: Vec<char> = text.chars().collect();
        for (at, op, ch) in edits {
            let at = at.min(chars.len().saturating_sub(1));
            match op {
                0 => chars[at] = ch,
                1 => {
                    chars.remove(at);
                }
                _ => chars.insert(at, ch),
            }
        }
        chars.into_iter().collect()
    })
}

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn the_config_parser_survives_mutated_files(main in mutated(VALID_MAIN), routes in mutated(VALID_ROUTES)) {
        let _ = load(&main, VALID_ROUTES);
        let _ = load(VALID_MAIN, &routes);
    }

    #[test]
    fn the_config_parser_survives_garbage(text in "\\PC{0,200}") {
        let _ = load(&text, &text);
    }
}

#[test]
fn the_unmutated_fuzz_config_loads() {
    load(VALID_MAIN, VALID_ROUTES).unwrap();
}

fn runtime() -> &'static FilterRuntime {
    static RUNTIME: OnceLock<std::sync::Arc<FilterRuntime>> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let limits = Limits {
            max_instances: 100,
            breaker: config::BreakerConfig { enabled: false, ..Default::default() },
            ..Limits::default()
        };
        FilterRuntime::new(&limits).unwrap()
    })
}

fn noop() -> &'static [u8] {
    static NOOP: OnceLock<Vec<u8>> = OnceLock::new();
    NOOP.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release/noop.wasm");
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run scripts/build-filters.sh", path.display()))
    })
}

proptest! {
    // Each case may compile a component, so the smoke is small.
    #![proptest_config(cases(40))]

    #[test]
    fn upload_validation_refuses_garbage_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut with_magic = b"\0asm\x0d\0\x01\0".to_vec();
        with_magic.extend_from_slice(&bytes);
        for candidate in [&bytes, &with_magic] {
            let error = FilterModule::compile(runtime(), "fuzz", candidate, None).err();
            prop_assert!(error.is_some(), "garbage was accepted");
            prop_assert!(!error.unwrap().to_string().is_empty());
        }
    }

    #[test]
    fn upload_validation_survives_mutated_components(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = noop().to_vec();
        for (at, value) in edits {
            let len = bytes.len();
            bytes[at % len] = value;
        }
        // Accepted or refused with a message; never a panic.
        if let Err(e) = FilterModule::compile(runtime(), "fuzz", &bytes, None) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
