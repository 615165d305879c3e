//! Chain entries with `reuse_instances = true`: an instance serves many
//! requests in turn, but never one that failed, never past its retirement,
//! and never across a reload. Entries without it get a fresh instance per
//! request. The `misbehave` fixture counts, in a static, the requests its
//! instance has seen and reports it as `x-instance-requests`, the requests
//! its filter value has seen as `x-value-requests`, and how often `new` ran in
//! the instance as `x-value-builds`.

use std::time::Duration;

use crate::support::*;

const ROUTES: &str = r#"
[[route]]
name = "fresh"
path_prefix = "/fresh"
upstream = "origin"
[[route.filters]]
module = "misbehave"
config = { count_requests = true }

[[route]]
name = "reused"
path_prefix = "/reused"
upstream = "origin"
[[route.filters]]
module = "misbehave"
reuse_instances = true
config = { count_requests = true, on_request = "panic", only_when_triggered = true }

[[route]]
name = "leaky"
path_prefix = "/leaky"
upstream = "origin"
[[route.filters]]
module = "misbehave"
reuse_instances = true
memory_mb = 16
# Room past the default deadline, which counts wall-clock ticks.
timeout_ms = 5000
config = { count_requests = true, on_request = "leak" }
"#;

fn proxy() -> Proxy {
    Proxy::start(&ProxyConfig::new(ROUTES, &["misbehave"]).with_admin())
}

/// The requests the instance that served `path` had seen, itself included.
fn seen(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> u32 {
    let reply = proxy.get(path, headers);
    assert_eq!(reply.status, 200, "{path}: {reply:?}");
    reply.header("x-instance-requests").unwrap_or_else(|| panic!("{path}: no count in {reply:?}")).parse().unwrap()
}

#[test]
fn an_entry_reuses_instances_only_when_it_opts_in() {
    let proxy = proxy();
    let fresh: Vec<u32> = (0..5).map(|_| seen(&proxy, "/fresh", &[])).collect();
    assert_eq!(fresh, [1; 5], "a fresh instance per request by default");
    let reused: Vec<u32> = (0..5).map(|_| seen(&proxy, "/reused", &[])).collect();
    assert_eq!(reused, [1, 2, 3, 4, 5], "one instance serves requests one after another");
    // ... but each request gets its own clone of the filter value, which
    // `new` built once, when the config was checked.
    for _ in 0..3 {
        let reply = proxy.get("/reused", &[]);
        assert_eq!(reply.header("x-value-requests"), Some("1"), "a filter value seen by one request only: {reply:?}");
        assert_eq!(reply.header("x-value-builds"), Some("1"), "new ran once in the instance: {reply:?}");
    }

    // Concurrent requests each get an instance of their own; afterwards the
    // route keeps one idle instance per request that was in flight at once.
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let url = proxy.url("/reused");
            std::thread::spawn(move || (0..20).map(|_| send("GET", &url, &[]).status).collect::<Vec<_>>())
        })
        .collect();
    for thread in threads {
        assert!(thread.join().unwrap().iter().all(|s| *s == 200));
    }
    let text = proxy.wait_for_metrics(&["cascade_filter_instances_live 0"]);
    // The leaky route's instance from its config check, and the reused route's.
    let idle = metric_value(&text, "cascade_filter_instances_idle");
    assert!((2..=7).contains(&idle), "{idle} idle instances for at most 6 requests in flight");
}

#[test]
fn a_reused_instance_that_failed_is_never_served_again() {
    let proxy = proxy();
    assert_eq!(seen(&proxy, "/reused", &[]), 1);
    assert_eq!(seen(&proxy, "/reused", &[]), 2);
    let trap = proxy.get("/reused", &[("x-misbehave-trigger", "1")]);
    assert_eq!(trap.status, 500, "{trap:?}");
    assert!(trap.json()["error"].as_str().unwrap().contains("trap"), "{trap:?}");
    assert_eq!(seen(&proxy, "/reused", &[]), 1, "the trapped instance was dropped; a fresh one serves");
    assert_eq!(seen(&proxy, "/reused", &[]), 2);
}

/// The fixture leaks 1 MiB per request. Reused without limit, its instance
/// would hit the 16 MiB cap and fail a request; it is retired once it has
/// grown into half the room its cap left it, so every request succeeds.
#[test]
fn a_leaking_filter_is_retired_before_its_memory_cap() {
    let proxy = proxy();
    let counts: Vec<u32> = (0..40).map(|_| seen(&proxy, "/leaky", &[])).collect();
    let most = *counts.iter().max().unwrap();
    assert!(most > 1, "instances were reused: {counts:?}");
    assert!(most < 16, "retired before reaching the cap: {counts:?}");
    assert!(counts.iter().filter(|c| **c == 1).count() >= 3, "retired and replaced more than once: {counts:?}");
}

#[test]
fn a_reload_drops_the_idle_instances_of_the_config_it_replaced() {
    let proxy = proxy();
    for _ in 0..3 {
        seen(&proxy, "/reused", &[]);
    }
    assert_eq!(seen(&proxy, "/reused", &[]), 4);
    for _ in 0..3 {
        assert_eq!(proxy.admin("POST", "/config/reload", b"", None).status, 200);
    }
    assert_eq!(seen(&proxy, "/reused", &[]), 1, "the new config's own instance");
    // One idle instance per reused entry of the current config: the replaced
    // configs' instances are gone with them.
    eventually("the replaced configs' instances dropped", Duration::from_secs(10), || {
        let text = proxy.wait_for_metrics(&["cascade_filter_instances_live 0"]);
        metric_value(&text, "cascade_filter_instances_idle") == 2
    });
}

/// An instance idle past `limits.idle_instance_timeout_secs` is dropped
/// with no request to notice it: after a burst, its pool slot and memory
/// come back, and the next request gets a fresh instance.
#[test]
fn an_instance_idle_past_its_timeout_is_dropped() {
    let config = ProxyConfig::new(ROUTES, &["misbehave"]).with_main("\n[limits]\nidle_instance_timeout_secs = 1\n");
    let proxy = Proxy::start(&config.with_admin());
    assert_eq!(seen(&proxy, "/reused", &[]), 1);
    eventually("the idle instances dropped", Duration::from_secs(30), || {
        let text = proxy.wait_for_metrics(&["cascade_filter_instances_live 0"]);
        metric_value(&text, "cascade_filter_instances_idle") == 0
    });
    assert_eq!(seen(&proxy, "/reused", &[]), 1, "the idle instance served again");
}

/// A replaced config's idle instances go at once, though a long request (a
/// download, a WebSocket) still holds that config: no new request uses them.
#[test]
fn a_long_request_does_not_keep_a_replaced_configs_idle_instances() {
    // An upstream that takes the request and answers only when told.
    let stalling = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let routes = format!("{ROUTES}\n[[route]]\nname = \"held\"\npath_prefix = \"/held\"\nupstream = \"stalling\"\n");
    let upstream = format!("\n[upstreams.stalling]\nservers = [\"{}\"]\n", stalling.local_addr().unwrap());
    let proxy = Proxy::start(&ProxyConfig::new(&routes, &["misbehave"]).with_main(&upstream).with_admin());
    let idle =
        || metric_value(&proxy.wait_for_metrics(&["cascade_filter_instances_live 0"]), "cascade_filter_instances_idle");
    // The reused route's instance and the leaky route's (its config check's).
    assert_eq!(seen(&proxy, "/reused", &[]), 1);
    assert_eq!(idle(), 2);

    let url = proxy.url("/held");
    let held = std::thread::spawn(move || send("GET", &url, &[]).status);
    stalling.set_nonblocking(true).unwrap();
    let mut upstream_side = None;
    eventually("the held request reaching its upstream", Duration::from_secs(30), || {
        upstream_side = stalling.accept().ok().map(|(stream, _)| stream);
        upstream_side.is_some()
    });
    let mut upstream_side = upstream_side.unwrap();
    upstream_side.set_nonblocking(false).unwrap();
    assert_eq!(proxy.admin("POST", "/config/reload", b"", None).status, 200);
    // One idle instance per reused entry of the new config (its check's);
    // the held request's config keeps none.
    eventually("the replaced config's idle instances dropped", Duration::from_secs(30), || idle() == 2);
    use std::io::Write;
    upstream_side.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
    assert_eq!(held.join().unwrap(), 200);
}
