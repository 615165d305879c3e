//! Failure policy: the fail-closed status, and the circuit breaker that
//! switches off a chain entry failing on too many requests.

use std::time::Duration;

use crate::support::*;

fn misbehave_route(on_error: &str, extra: &str) -> String {
    format!(
        "[[route]]\nname = \"flaky\"\nupstream = \"origin\"\n\n[[route.filters]]\nmodule = \"misbehave\"\n\
         on_error = \"{on_error}\"\nconfig = {{ on_request = \"panic\", only_when_triggered = true }}\n{extra}"
    )
}

/// A route at `/<name>` whose one filter is misbehave, with `entry` (its
/// config and settings) appended to the chain entry.
fn misbehave_at(name: &str, entry: &str) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"origin\"\n[[route.filters]]\n\
         module = \"misbehave\"\n{entry}\n"
    )
}

const TRIGGER: (&str, &str) = ("x-misbehave-trigger", "1");
const BREAKER: &str = "breaker = { min_requests = 4, failure_ratio = 0.5, window_secs = 60, cooldown_secs = 1 }\n";

#[test]
fn fail_closed_answers_with_the_configured_status() {
    let proxy =
        Proxy::start(&ProxyConfig::new(&misbehave_route("fail-closed", "failure_status = 503\n"), &["misbehave"]));
    let reply = proxy.get("/", &[TRIGGER]);
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.json()["request_id"], reply.header("x-request-id").unwrap());

    // A status that is not a 5xx is refused, naming file, line and key.
    let dir = tempfile::tempdir().unwrap();
    let main = ProxyConfig::new(&misbehave_route("fail-closed", "failure_status = 404\n"), &["misbehave"])
        .write(dir.path(), free_port());
    let out = run_cascade(&["check", "--config", main.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("test.toml:") && stderr.contains("failure_status") && stderr.contains("404"), "{stderr}");
}

fn breaker_state(proxy: &Proxy) -> String {
    let modules = proxy.admin("GET", "/modules/misbehave", b"", None).json();
    modules["breakers"][0]["state"].as_str().unwrap_or_default().to_string()
}

#[test]
fn breaker_opens_answers_without_running_the_filter_and_recovers() {
    let proxy = Proxy::start(&ProxyConfig::new(&misbehave_route("fail-closed", BREAKER), &["misbehave"]).with_admin());
    assert_eq!(proxy.get("/", &[]).status, 200);
    assert_eq!(breaker_state(&proxy), "closed");
    for _ in 0..4 {
        assert_eq!(proxy.get("/", &[TRIGGER]).status, 500);
    }
    // One success then three failures: 3 of 4 calls failed, over the 50%
    // threshold at the minimum of 4, so the fourth trigger was not even run.
    assert_eq!(breaker_state(&proxy), "open");
    // The filter would pass this request, but it is not run: its policy
    // (fail-closed) answers at once.
    let refused = proxy.get("/", &[]);
    assert_eq!(refused.status, 500);
    assert!(refused.json()["error"].as_str().unwrap().contains("circuit breaker open"), "{refused:?}");
    proxy.wait_for_metrics(&[
        "cascade_filter_breaker_open{route=\"flaky\",position=\"0\",module=\"misbehave\"} 1",
        "cascade_filter_breaker_opens_total{route=\"flaky\",position=\"0\",module=\"misbehave\"} 1",
        "cascade_filter_failures_total{module=\"misbehave\",kind=\"trap\"} 3",
        "cascade_filter_failures_total{module=\"misbehave\",kind=\"breaker-open\"} 2",
    ]);
    // After the cool-down one probe runs the filter; it succeeds, and the
    // breaker closes.
    eventually("the breaker half-opening", Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(200));
        proxy.get("/", &[]).status == 200
    });
    assert_eq!(breaker_state(&proxy), "closed");
    assert_eq!(proxy.get("/", &[]).status, 200);
}

#[test]
fn an_open_breaker_on_a_fail_open_entry_skips_the_filter() {
    let proxy = Proxy::start(&ProxyConfig::new(&misbehave_route("fail-open", BREAKER), &["misbehave"]).with_admin());
    for _ in 0..4 {
        let reply = proxy.get("/", &[TRIGGER]);
        assert_eq!(reply.status, 200, "fail-open: the request goes through");
    }
    // 4 of 4 failed: open after the fourth.
    assert_eq!(breaker_state(&proxy), "open");
    // Calls that ran (and failed) are timed; skipped ones are not.
    let ran = "cascade_filter_duration_seconds_count{module=\"misbehave\",phase=\"on-request\"} 4";
    proxy.wait_for_metrics(&[ran]);
    for _ in 0..3 {
        let skipped = proxy.get("/", &[]);
        assert_eq!(skipped.status, 200);
        assert_eq!(skipped.json()["path"], "/");
    }
    proxy.wait_for_metrics(&["cascade_filter_failures_total{module=\"misbehave\",kind=\"breaker-open\"} 3"]);
    assert!(proxy.admin("GET", "/metrics", b"", None).body.contains(ran), "the filter was not run while open");
}

// What a filter may hand back is limited per chain entry, over [limits].
#[test]
fn output_limits_are_set_per_chain_entry() {
    let route = |name: &str, behaviour: &str, extra: &str| {
        misbehave_at(name, &format!("timeout_ms = 5000\nconfig = {{ on_request = \"{behaviour}\" }}\n{extra}"))
    };
    let routes = [
        route("default-reply", "giant-reply", ""),
        route("big-reply", "giant-reply", "max_reply_body_kb = 4096"),
        route("few-headers", "many-headers", "max_headers = 20"),
    ]
    .concat();
    let proxy = Proxy::start(&ProxyConfig::new(&routes, &["misbehave"]).with_main("\n[limits]\nmax_headers = 100\n"));
    // The 2 MiB reply is over the default 1 MiB, but within this entry's 4 MiB.
    let refused = proxy.get("/default-reply", &[]);
    assert_eq!(refused.status, 500);
    assert!(refused.json()["error"].as_str().unwrap().contains("exceeds 1048576"), "{refused:?}");
    let allowed = proxy.get("/big-reply", &[]);
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.body.len(), 2 << 20);
    // The entry's header cap (20) holds instead of [limits] (100): the filter's
    // edits stop once the message has 20 headers (then the proxy adds its
    // own five: x-request-id, x-forwarded-for, x-forwarded-proto, cdn-loop,
    // via).
    let capped = proxy.get("/few-headers", &[]);
    assert_eq!(capped.status, 200, "{capped:?}");
    let at_origin = capped.json()["headers"].as_object().unwrap().len();
    assert!((18..=25).contains(&at_origin), "the origin got {at_origin} headers");
}

// Fail-open skips a failed filter whole: what it edited before it failed
// is undone, in either phase, so the upstream and the client see the
// messages as they would without the filter (as with an open breaker).
#[test]
fn fail_open_undoes_what_the_failed_filter_edited() {
    let route = |name: &str, phase: &str, on_error: &str| {
        misbehave_at(name, &format!("on_error = \"{on_error}\"\nconfig = {{ {phase} = \"edit-then-panic\" }}"))
    };
    let routes = [
        route("request", "on_request", "fail-open"),
        route("response", "on_response", "fail-open"),
        route("closed", "on_request", "fail-closed"),
    ]
    .concat();
    let proxy = Proxy::start(&ProxyConfig::new(&routes, &["misbehave"]));
    let client_header = ("x-client-header", "kept");

    let reply = proxy.get("/request/page", &[client_header]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = reply.json();
    assert_eq!(seen["path"], "/request/page", "the path edit is undone: {seen}");
    assert_eq!(seen["headers"]["x-client-header"], "kept", "the removed header is back: {seen}");
    assert!(seen["headers"].get("x-misbehave-edited").is_none(), "the set header is gone: {seen}");

    let reply = proxy.get("/response/page", &[]);
    assert_eq!(reply.status, 200, "the status edit is undone: {reply:?}");
    assert_eq!(reply.header("x-misbehave-edited"), None, "{reply:?}");
    assert_eq!(reply.json()["path"], "/response/page");

    // Fail-closed answers with its error, as before.
    assert_eq!(proxy.get("/closed/page", &[client_header]).status, 500);
}

// The CPU deadline stops guest code that runs; a filter that waits on the
// host (a WASI sleep) is stopped at the same deadline, and only its own
// request sees it.
#[test]
fn a_filter_waiting_past_its_deadline_is_stopped() {
    let route = |name: &str, on_error: &str| {
        let config = "{ on_request = \"sleep\", spin_ms = 60000, only_when_triggered = true }";
        misbehave_at(name, &format!("on_error = \"{on_error}\"\ntimeout_ms = 200\nconfig = {config}"))
    };
    let routes = [route("closed", "fail-closed"), route("open", "fail-open")].concat();
    let proxy = Proxy::start(&ProxyConfig::new(&routes, &["misbehave"]).with_admin());
    let started = std::time::Instant::now();
    let stopped = proxy.get("/closed", &[TRIGGER]);
    assert_eq!(stopped.status, 500, "{stopped:?}");
    let error = stopped.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("(timeout)") && error.contains("waited past its 200ms deadline"), "{error}");
    let skipped = proxy.get("/open", &[TRIGGER]);
    assert_eq!(skipped.status, 200, "fail-open: the request goes through without the filter");
    // Both were cut off long before the minute the filter asked to sleep
    // (a bound no slow machine comes near).
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    // Requests that do not trigger the sleep are served as usual.
    assert_eq!(proxy.get("/closed", &[]).status, 200);
    proxy.wait_for_metrics(&["cascade_filter_failures_total{module=\"misbehave\",kind=\"timeout\"} 2"]);
}

// A reply must be a final answer: a 1xx would leave the client waiting for
// one. The filter fails (bad return), and its policy applies.
#[test]
fn a_reply_with_an_interim_status_is_a_filter_failure() {
    let routes = [
        misbehave_at("interim", "config = { on_request = \"respond\", reply_status = 101 }"),
        misbehave_at("skipped", "on_error = \"fail-open\"\nconfig = { on_request = \"respond\", reply_status = 103 }"),
        misbehave_at("final", "config = { on_request = \"respond\", reply_status = 299 }"),
    ]
    .concat();
    let proxy = Proxy::start(&ProxyConfig::new(&routes, &["misbehave"]));
    let refused = proxy.get("/interim", &[]);
    assert_eq!(refused.status, 500, "{refused:?}");
    let error = refused.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("(bad-return)") && error.contains("reply status 101 is not a final status"), "{error}");
    assert_eq!(proxy.get("/skipped", &[]).status, 200, "fail-open: forwarded without the filter");
    assert_eq!(proxy.get("/final", &[]).status, 299);
}

// A full instance pool is the proxy's capacity failing, not the filter: the
// request gets a 503, and the breaker does not count it, so the filter is
// not switched off once the load has passed.
#[test]
fn a_full_instance_pool_answers_503_and_does_not_trip_the_breaker() {
    let entry = "timeout_ms = 20000\nbreaker = { min_requests = 1, failure_ratio = 0.5, window_secs = 60, cooldown_secs = 60 }\n\
                 config = { on_request = \"sleep\", spin_ms = 5000, only_when_triggered = true }";
    let config = ProxyConfig::new(&misbehave_at("busy", entry), &["misbehave"])
        .with_main("\n[limits]\nmax_instances = 1\n")
        .with_admin();
    let proxy = std::sync::Arc::new(Proxy::start(&config));
    // One request holds the only slot while its filter sleeps.
    let holder = {
        let proxy = proxy.clone();
        std::thread::spawn(move || proxy.get("/busy", &[TRIGGER]).status)
    };
    proxy.wait_for_metrics(&["cascade_filter_instances_live 1"]);
    let refused = proxy.get("/busy", &[]);
    assert_eq!(refused.status, 503, "{refused:?}");
    let error = refused.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("(pool-full)") && error.contains("no instance slot is free"), "{error}");
    // A change cannot check the route's config either: a 503 that says so,
    // not a 400 blaming the config. (The bytes are misbehave's, whose
    // compiled artifact is cached: no compile.)
    let bytes = std::fs::read(wasm("misbehave")).unwrap();
    let upload = proxy.admin("PUT", "/modules/unrelated", &bytes, None);
    assert_eq!(upload.status, 503, "{upload:?}");
    assert!(upload.json()["error"].as_str().unwrap().contains("could not check its config now"), "{upload:?}");
    assert_eq!(holder.join().unwrap(), 200);
    // The breaker (open after one failure in two) did not count it.
    assert_eq!(breaker_state(&proxy), "closed");
    assert_eq!(proxy.get("/busy", &[]).status, 200);
    proxy.wait_for_metrics(&["cascade_filter_failures_total{module=\"misbehave\",kind=\"pool-full\"} 1"]);
}

// A change elsewhere (another module uploaded, a config reload) keeps an
// unchanged entry's breaker: the failing filter is not switched back on.
#[test]
fn a_breaker_survives_changes_to_other_modules_and_reloads() {
    let long_cooldown = BREAKER.replace("cooldown_secs = 1", "cooldown_secs = 600");
    let proxy =
        Proxy::start(&ProxyConfig::new(&misbehave_route("fail-closed", &long_cooldown), &["misbehave"]).with_admin());
    for _ in 0..4 {
        assert_eq!(proxy.get("/", &[TRIGGER]).status, 500);
    }
    assert_eq!(breaker_state(&proxy), "open");
    let noop = std::fs::read(wasm("noop")).unwrap();
    assert_eq!(proxy.admin("PUT", "/modules/unrelated", &noop, None).status, 200);
    assert_eq!(breaker_state(&proxy), "open", "an upload of another module closed it");
    assert_eq!(proxy.admin("POST", "/config/reload", b"", None).status, 200);
    assert_eq!(breaker_state(&proxy), "open", "a reload that changed nothing here closed it");
    let refused = proxy.get("/", &[]);
    assert!(refused.json()["error"].as_str().unwrap().contains("circuit breaker open"), "{refused:?}");
}

/// A chain may run one module twice: each entry has its own breaker, and its
/// own series in the metrics (two series with the same labels would be
/// invalid Prometheus text, and one breaker would go missing).
#[test]
fn a_module_twice_in_a_chain_has_a_breaker_each() {
    let routes = format!(
        "{}[[route.filters]]\nmodule = \"misbehave\"\nconfig = {{ on_request = \"panic\", only_when_triggered = true }}\n",
        misbehave_route("fail-closed", "")
    );
    let proxy = Proxy::start(&ProxyConfig::new(&routes, &["misbehave"]).with_admin());
    assert_eq!(proxy.get("/", &[]).status, 200);
    let metrics = proxy.wait_for_metrics(&[
        "cascade_filter_breaker_open{route=\"flaky\",position=\"0\",module=\"misbehave\"} 0",
        "cascade_filter_breaker_open{route=\"flaky\",position=\"1\",module=\"misbehave\"} 0",
    ]);
    assert_eq!(metrics.matches("cascade_filter_breaker_opens_total{").count(), 2, "{metrics}");
    let module = proxy.admin("GET", "/modules/misbehave", b"", None).json();
    let positions: Vec<_> = module["breakers"].as_array().unwrap().iter().map(|b| b["position"].clone()).collect();
    assert_eq!(positions, [0, 1]);
}

/// A filter failing closed on a cache hit answers as the route says (its
/// failure status, the error body with the request id), as on a miss;
/// Pingora's own answer there was a bare 500.
#[test]
fn a_filter_failing_on_a_cache_hit_answers_as_the_route_says() {
    let routes = "[[route]]\nname = \"cached\"\nupstream = \"origin\"\n[route.cache]\nttl_secs = 60\n\
                  [[route.filters]]\nmodule = \"misbehave\"\non_error = \"fail-closed\"\nfailure_status = 503\n\
                  config = { on_response = \"panic\", only_when_triggered = true }\n";
    let proxy = Proxy::start(&ProxyConfig::new(routes, &["misbehave"]));
    assert_eq!(proxy.get("/page", &[]).status, 200);
    let hit = proxy.get("/page", &[]);
    assert!(hit.header("cache-status").unwrap_or_default().contains("hit"), "{hit:?}");
    let failed = proxy.get("/page", &[TRIGGER]);
    assert!(failed.header("cache-status").unwrap_or_default().contains("hit"), "{failed:?}");
    assert_eq!(failed.status, 503, "{failed:?}");
    assert_eq!(failed.json()["request_id"], failed.header("x-request-id").unwrap());
}
