//! The foundation, end to end: routing, the rewrite filter, failure policy,
//! upstream errors, TLS with HTTP/2, and start-up validation.

use crate::support::*;

const REWRITE_ROUTE: &str = r#"
[[route]]
name = "api"
path_prefix = "/api"
upstream = "origin"

[[route.filters]]
module = "rewrite"
config = { strip_prefix = "/api", add_prefix = "/v2", request_headers = { set = { "x-edge" = "cascade" }, add = { "x-tag" = "edge" }, remove = ["x-debug"] }, response_headers = { set = { "x-served-by" = "cascade" }, remove = ["x-origin"] } }
"#;

#[test]
fn origin_sees_rewritten_request_and_client_sees_rewritten_response() {
    let proxy = Proxy::start(&ProxyConfig::new(REWRITE_ROUTE, &["rewrite"]));
    let reply = proxy.get("/api/users?page=2", &[("x-debug", "1"), ("x-tag", "client")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let echoed = reply.json();
    assert_eq!(echoed["path"], "/v2/users");
    assert_eq!(echoed["query"], "page=2");
    assert_eq!(echoed["headers"]["x-edge"], "cascade");
    assert_eq!(echoed["headers"]["x-tag"], "client, edge");
    assert!(echoed["headers"].get("x-debug").is_none(), "x-debug reached the origin");
    assert_eq!(reply.header("x-served-by"), Some("cascade"));
    assert_eq!(reply.header("x-origin"), None, "response header was not removed");
    // The same request id reaches the origin and the client.
    let id = reply.header("x-request-id").expect("request id on response");
    assert_eq!(echoed["headers"]["x-request-id"], id);
}

#[test]
fn unknown_route_gets_404_with_request_id() {
    let proxy = Proxy::start(&ProxyConfig::new(REWRITE_ROUTE, &["rewrite"]));
    let reply = proxy.get("/elsewhere", &[]);
    assert_eq!(reply.status, 404);
    let body = reply.json();
    assert!(body["error"].as_str().unwrap().contains("/elsewhere"), "{body}");
    assert_eq!(body["request_id"], reply.header("x-request-id").unwrap());
}

/// The proxy's own answer to a failed upstream goes through the filters'
/// response phase, as the upstream's answer would have.
#[test]
fn unreachable_origin_gets_502() {
    let mut routes = String::from(
        "[[route]]\nname = \"dead\"\npath_prefix = \"/\"\nupstream = \"origin\"\n\n[[route.filters]]\n\
         module = \"rewrite\"\nconfig = { response_headers = { set = { \"x-served-by\" = \"cascade\" } } }\n",
    );
    routes.push_str(&misbehave_route("trap", "/trap", "fail-closed", r#"{ on_response = "panic" }"#));
    let nothing_listens = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = ProxyConfig::over(nothing_listens, &routes).with_main("connect_timeout_ms = 500\n");
    let proxy = Proxy::start(&config.with_built_module("rewrite").with_built_module("misbehave"));
    let reply = proxy.get("/", &[]);
    assert_eq!(reply.status, 502, "{reply:?}");
    assert!(reply.header("x-request-id").is_some());
    assert!(reply.json()["error"].as_str().unwrap().contains("upstream unavailable"), "{}", reply.body);
    assert_eq!(reply.header("x-served-by"), Some("cascade"), "the response phase ran: {reply:?}");
    // A filter failing closed on that answer fails the request, as it would
    // on the upstream's.
    let reply = proxy.get("/trap", &[]);
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(reply.json()["error"].as_str().unwrap().contains("on-response"), "{}", reply.body);
    // The proxy keeps serving after the failure.
    assert_eq!(proxy.get("/again", &[]).status, 502);
}

fn misbehave_route(name: &str, prefix: &str, on_error: &str, config: &str) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"origin\"\n\n\
         [[route.filters]]\nmodule = \"misbehave\"\non_error = \"{on_error}\"\nconfig = {config}\n"
    )
}

#[test]
fn trap_fails_closed_for_that_request_only() {
    let routes = misbehave_route("trap", "/", "fail-closed", r#"{ on_request = "panic", only_when_triggered = true }"#);
    let proxy = Proxy::start(&ProxyConfig::new(&routes, &["misbehave"]));
    let failed = proxy.get("/x", &[("x-misbehave-trigger", "1")]);
    assert_eq!(failed.status, 500, "{failed:?}");
    let body = failed.json();
    let id = failed.header("x-request-id").unwrap();
    assert_eq!(body["request_id"], id);
    assert!(body["error"].as_str().unwrap().contains("misbehave"), "{body}");
    // The very next request gets a fresh instance and succeeds.
    let next = proxy.get("/x", &[]);
    assert_eq!(next.status, 200, "{next:?}");
    assert_eq!(next.json()["path"], "/x");
}

/// A filter's panic message and its place in the source reach the proxy's
/// log, on one line tagged with module, route and request id; the client
/// gets the trap, not the message.
#[test]
fn a_panic_in_a_filter_is_logged_with_its_message() {
    let routes = misbehave_route("trap", "/", "fail-closed", r#"{ on_request = "panic" }"#);
    let proxy = Proxy::start(&ProxyConfig::new(&routes, &["misbehave"]));
    let failed = proxy.get("/x", &[]);
    assert_eq!(failed.status, 500, "{failed:?}");
    assert!(failed.body.contains("trap") && !failed.body.contains("asked to panic"), "{failed:?}");
    let id = failed.header("x-request-id").unwrap();
    let line = proxy.wait_for_log_line(&[&format!("request={id}]"), "panicked at"]);
    assert!(line.contains("ERROR") && line.contains("[misbehave route=trap "), "{line}");
    assert!(line.contains("src/lib.rs:") && line.ends_with("misbehave: asked to panic"), "{line}");
}

#[test]
fn trap_fails_open_and_the_request_goes_through() {
    let routes = misbehave_route("open", "/", "fail-open", r#"{ on_request = "panic" }"#);
    let proxy = Proxy::start(&ProxyConfig::new(&routes, &["misbehave"]));
    let reply = proxy.get("/through", &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["path"], "/through");
    // The failed instance was skipped: it does not see the response either.
    assert_eq!(reply.header("x-misbehave"), None);
}

/// A response header staged in on-request is made at the filter's place in
/// the response phase, so its own on-response sees it, and a filter before
/// it (rewrite, whose rules are staged too) edits after it. A call that fails
/// leaves nothing staged (fail-open), and a fail-closed error answer skips
/// the response phase, staged edits included.
#[test]
fn staged_response_headers_come_from_calls_that_succeeded() {
    let mut routes = misbehave_route("staged", "/staged", "fail-closed", "{ stage = true }");
    routes.push_str(
        "\n[[route]]\nname = \"mixed\"\npath_prefix = \"/mixed\"\nupstream = \"origin\"\n\
         [[route.filters]]\nmodule = \"rewrite\"\n\
         config = { response_headers = { remove = [\"x-misbehave\"], set = { \"x-served-by\" = \"cascade\" } } }\n\
         [[route.filters]]\nmodule = \"misbehave\"\nconfig = { stage = true }\n",
    );
    routes.push_str(&misbehave_route("open", "/open", "fail-open", r#"{ stage = true, on_request = "panic" }"#));
    routes.push_str(&misbehave_route("closed", "/closed", "fail-closed", r#"{ stage = true, on_request = "panic" }"#));
    let proxy = Proxy::start(&ProxyConfig::new(&routes, &["misbehave", "rewrite"]));

    let staged = proxy.get("/staged", &[]);
    assert_eq!(staged.status, 200, "{staged:?}");
    assert_eq!(staged.header("x-misbehave-staged"), Some("request"), "{staged:?}");
    assert_eq!(staged.header("x-misbehave-saw-staged"), Some("yes"), "made before its on-response: {staged:?}");

    // The first request holds rewrite's instance for its on-response; the
    // second only its staged edits. Both times they come after misbehave's
    // on-response, which added `x-misbehave`.
    for _ in 0..2 {
        let mixed = proxy.get("/mixed", &[]);
        assert_eq!(mixed.status, 200, "{mixed:?}");
        assert_eq!(mixed.header("x-misbehave-saw-staged"), Some("yes"), "{mixed:?}");
        assert_eq!(mixed.header("x-misbehave"), None, "rewrite has the last word: {mixed:?}");
        assert_eq!(mixed.header("x-served-by"), Some("cascade"), "{mixed:?}");
    }

    let open = proxy.get("/open", &[]);
    assert_eq!(open.status, 200, "{open:?}");
    assert_eq!(open.header("x-misbehave-staged"), None, "the failed call's edit was dropped: {open:?}");

    let closed = proxy.get("/closed", &[]);
    assert_eq!(closed.status, 500, "{closed:?}");
    assert_eq!(closed.header("x-misbehave-staged"), None, "{closed:?}");
}

#[test]
fn endless_loop_is_stopped_by_the_deadline() {
    let mut routes = misbehave_route("loop", "/loop", "fail-closed", r#"{ on_request = "loop" }"#);
    // Short, yet room for the config check at start on a busy machine: the
    // deadline counts wall-clock ticks.
    routes.push_str("timeout_ms = 200\n");
    routes.push_str("[[route]]\nname = \"plain\"\npath_prefix = \"/\"\nupstream = \"origin\"\n");
    let proxy = Proxy::start(&ProxyConfig::new(&routes, &["misbehave"]));
    let reply = proxy.get("/loop", &[]);
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(reply.json()["error"].as_str().unwrap().contains("timeout"), "{}", reply.body);
    assert_eq!(proxy.get("/plain", &[]).status, 200);
}

/// Deadlines are instants; the epoch tick, a tenth of the shortest deadline
/// configured, only says how often they are checked. A reload that adds a
/// 10 ms deadline, and so a finer tick, while a call with a 5 s deadline
/// spins does not stop that call early: armed in ticks of the old 10 ms and
/// counted in the new 1 ms ones, it would stop after about half a second.
#[test]
fn a_finer_tick_after_a_reload_stops_no_running_call_early() {
    let mut routes = misbehave_route("slow", "/slow", "fail-closed", r#"{ on_request = "spin", spin_ms = 1500 }"#);
    routes.push_str("timeout_ms = 5000\n");
    let proxy = std::sync::Arc::new(Proxy::start(&ProxyConfig::new(&routes, &["misbehave"]).with_admin()));
    proxy.wait_for_metrics(&["cascade_filter_epoch_tick_seconds 0.01\n"]);
    let slow = {
        let proxy = proxy.clone();
        std::thread::spawn(move || proxy.get("/slow", &[]))
    };
    proxy.wait_for_metrics(&["cascade_filter_instances_live 1\n"]);

    routes.push_str(&misbehave_route("loop", "/loop", "fail-closed", r#"{ on_request = "loop" }"#));
    routes.push_str("timeout_ms = 10\n");
    std::fs::write(proxy.dir.path().join("routes/test.toml"), routes).unwrap();
    assert_eq!(proxy.admin("POST", "/config/reload", b"", None).status, 200);
    proxy.wait_for_metrics(&["cascade_filter_epoch_tick_seconds 0.001\n"]);

    let reply = slow.join().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["headers"]["x-misbehave"], "request", "{}", reply.body);
    let reply = proxy.get("/loop", &[]);
    assert_eq!(reply.status, 500, "the new route's loop is stopped: {reply:?}");
    assert!(reply.json()["error"].as_str().unwrap().contains("timeout"), "{}", reply.body);
}

/// The contract is versioned: a filter built against `cascade:filter@0.1.0`,
/// before the edge capabilities, still loads and runs on this host (0.1.3).
#[test]
fn a_filter_built_against_an_earlier_contract_still_runs() {
    let routes = "[[route]]\nname = \"old\"\npath_prefix = \"/\"\nupstream = \"origin\"\n\n\
                  [[route.filters]]\nmodule = \"contract_0_1_0\"\n";
    let proxy = Proxy::start(&ProxyConfig::new(routes, &["contract_0_1_0"]));
    let reply = proxy.get("/x", &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["headers"]["x-contract"], "0.1.0", "{}", reply.body);
    assert_eq!(reply.header("x-contract"), Some("0.1.0"), "{reply:?}");
}

#[test]
fn unbounded_allocation_is_stopped_by_the_memory_cap() {
    let mut routes = misbehave_route("alloc", "/", "fail-closed", r#"{ on_request = "alloc" }"#);
    // Room past the default 50 ms deadline: it counts wall-clock ticks, and
    // growing to the cap on a busy machine can take longer than that.
    routes.push_str("memory_mb = 8\ntimeout_ms = 5000\n");
    let proxy = Proxy::start(&ProxyConfig::new(&routes, &["misbehave"]));
    let reply = proxy.get("/", &[]);
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(reply.json()["error"].as_str().unwrap().contains("memory-cap"), "{}", reply.body);
}

#[test]
fn response_phase_trap_fails_closed() {
    let routes = misbehave_route("resp", "/", "fail-closed", r#"{ on_response = "panic" }"#);
    let proxy = Proxy::start(&ProxyConfig::new(&routes, &["misbehave"]));
    let reply = proxy.get("/", &[]);
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(reply.json()["error"].as_str().unwrap().contains("on-response"), "{}", reply.body);
}

#[test]
fn filter_reply_skips_the_upstream_and_passes_earlier_response_filters() {
    let routes = format!(
        "{REWRITE_ROUTE}\n[[route.filters]]\nmodule = \"misbehave\"\nconfig = {{ on_request = \"respond\" }}\n"
    );
    let proxy = Proxy::start(&ProxyConfig::new(&routes, &["rewrite", "misbehave"]));
    let reply = proxy.get("/api/teapot", &[]);
    assert_eq!(reply.status, 418);
    assert_eq!(reply.body, "short and stout");
    assert_eq!(reply.header("x-misbehave"), Some("responded"));
    // rewrite ran before the replying filter, so it sees the reply too.
    assert_eq!(reply.header("x-served-by"), Some("cascade"));
    // The two invalid headers and the framing header are dropped, in one
    // log line.
    assert_eq!(reply.header("x-bad-value"), None);
    let id = reply.header("x-request-id").unwrap();
    let line = proxy.wait_for_log_line(&[&format!("request {id}:"), "dropping 3 invalid reply header(s)"]);
    assert!(line.ends_with(r#"the first "bad name""#), "{line}");
    proxy.wait_for_access_log(id);
    assert_eq!(proxy.log_lines(&format!("request {id}:")).len(), 1);
    // On the wire: the body framed once, by its length.
    let (status, raw) = send_raw_bytes(proxy.port, b"GET /api/teapot HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, Some(418), "{raw}");
    let head = raw.to_ascii_lowercase();
    assert!(!head.contains("transfer-encoding"), "{raw}");
    assert!(head.contains("content-length: 15\r\n") && raw.ends_with("\r\n\r\nshort and stout"), "{raw}");
}

#[test]
fn http2_over_tls() {
    let fixtures = root().join("tests/fixtures/tls");
    let tls_port = free_port();
    let config = ProxyConfig::new(REWRITE_ROUTE, &["rewrite"]).with_tls(tls_port, &fixtures);
    let _proxy = Proxy::start(&config);
    let url = format!("https://localhost:{tls_port}/api/h2");
    let out = std::process::Command::new("curl")
        .args(["-sk", "--http2", "--retry", "5", "--retry-connrefused", "-w", "\n%{http_version}", &url])
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, version) = text.rsplit_once('\n').unwrap();
    assert_eq!(version, "2", "{text}");
    let echoed: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(echoed["path"], "/v2/h2");
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https", "{body}");
    // The request's :authority is the origin's Host, through a filter's path
    // edit and the proxy's own normalization alike.
    let host = format!("localhost:{tls_port}");
    assert_eq!(echoed["headers"]["host"], host.as_str(), "{body}");
    let out = std::process::Command::new("curl")
        .args(["-sk", "--http2", "--path-as-is", &format!("https://localhost:{tls_port}//api//h2")])
        .output()
        .expect("curl is installed");
    let echoed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(echoed["path"], "/v2/h2", "{echoed}");
    assert_eq!(echoed["headers"]["host"], host.as_str(), "{echoed}");

    // On a TLS listener the scheme is https, whatever the client says.
    let out = std::process::Command::new("curl")
        .args(["-sk", "--http2", "-H", "x-forwarded-proto: http", &url])
        .output()
        .expect("curl is installed");
    let echoed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https", "{echoed}");

    // Browsers send each cookie on a line of its own over HTTP/2; the
    // HTTP/1.1 origin gets them on one line, joined by "; ".
    let out = std::process::Command::new("curl")
        .args(["-sk", "--http2", "-H", "cookie: a=1", "-H", "cookie: b=2", &url])
        .output()
        .expect("curl is installed");
    let echoed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(echoed["headers"]["cookie"], "a=1; b=2", "{echoed}");
}

/// `X-Forwarded-Proto` is one of two values, and in the cache key. A
/// client's own `X-Forwarded-Proto: https` and `X-Forwarded-For` are
/// believed only from a trusted proxy (`server.trusted_proxies`), whose
/// `X-Forwarded-For` names the client that filters see (a rate limit's
/// bucket, here).
#[test]
fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let routes = r#"
[[route]]
name = "cached"
path_prefix = "/page"
upstream = "origin"
[route.cache]
ttl_secs = 60

[[route]]
name = "limited"
path_prefix = "/limited"
upstream = "origin"
[[route.filters]]
module = "rate_limit"
config = { policy = "one", key = "ip" }
"#;
    let config =
        ProxyConfig::new(routes, &["rate_limit"]).with_main("[rate_limits.one]\nrate = 1\nper = \"hour\"\nburst = 1\n");
    let mut behind_a_tier = config.clone();
    behind_a_tier.server_extra.push_str("trusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]\n");
    let facing_clients = Proxy::start(&config);
    let behind_a_tier = Proxy::start(&behind_a_tier);
    let seen = |proxy: &Proxy, proto: Option<&str>| {
        let headers: Vec<(&str, &str)> = proto.map(|p| ("x-forwarded-proto", p)).into_iter().collect();
        let reply = proxy.get("/page", &headers);
        assert_eq!(reply.status, 200, "{reply:?}");
        (reply.json()["headers"]["x-forwarded-proto"].as_str().unwrap().to_string(), origin_count(&reply))
    };
    let limited = |proxy: &Proxy, forwarded_for: &str| {
        let reply = proxy.get("/limited", &[("x-forwarded-for", forwarded_for)]);
        (reply.status, reply)
    };

    // From a trusted proxy: its https is kept, in an entry of its own.
    let (plain, first) = seen(&behind_a_tier, None);
    assert_eq!(plain, "http");
    let (tls, second) = seen(&behind_a_tier, Some("HTTPS"));
    assert_eq!(tls, "https");
    assert_ne!(first, second, "an https answer was served from the http entry");
    // Anything else is http, and shares the http entry.
    assert_eq!(seen(&behind_a_tier, Some("gopher")), ("http".to_string(), first));
    assert_eq!(seen(&behind_a_tier, Some("https")), ("https".to_string(), second));
    // Its X-Forwarded-For names the client: one bucket each.
    let (status, reply) = limited(&behind_a_tier, "203.0.113.7");
    assert_eq!(status, 200, "{reply:?}");
    assert_eq!(reply.json()["headers"]["x-forwarded-for"], "203.0.113.7, 127.0.0.1", "the hop is appended");
    assert_eq!(limited(&behind_a_tier, "198.51.100.1").0, 200, "another client, another bucket");
    // What the client itself put left of the last untrusted hop is not read.
    assert_eq!(limited(&behind_a_tier, "192.0.2.1, 203.0.113.7, 10.1.2.3").0, 429);

    // Only a trusted proxy may say which host, port or path the client
    // asked for: no cache key holds them, and origins build links from them.
    let claims = [
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "host=evil.example"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-prefix", "/evil"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
    ];
    let claimed = |proxy: &Proxy| proxy.get("/page/claims", &claims).json()["headers"].clone();
    let (trusted, untrusted) = (claimed(&behind_a_tier), claimed(&facing_clients));
    for (name, value) in claims {
        assert_eq!(trusted[name], value, "a trusted proxy's {name} was dropped");
        assert!(untrusted.get(name).is_none(), "a client's {name} reached the origin: {untrusted}");
    }

    // From a client: it cannot claim https, nor be someone else.
    let (plain, first) = seen(&facing_clients, None);
    assert_eq!(seen(&facing_clients, Some("https")), (plain, first), "a client's https claim was believed");
    assert_eq!(limited(&facing_clients, "203.0.113.7").0, 200);
    assert_eq!(limited(&facing_clients, "198.51.100.1").0, 429, "a client chose its own rate-limit bucket");
}

#[test]
fn check_names_file_and_line_of_a_bad_config() {
    let config = ProxyConfig::new("[[route]]\nname = \"a\"\nupstream = \"origin\"\npath_prefx = \"/typo\"\n", &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = config.write(dir.path(), free_port());
    let out = run_cascade(&["check", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("routes/test.toml:4:"), "{stderr}");
    assert!(stderr.contains("unknown field `path_prefx`"), "{stderr}");
}

#[test]
fn check_accepts_the_shipped_config() {
    let conf = root().join("conf/cascade.toml");
    let out = run_cascade(&["check", "--config", conf.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn check_refuses_a_filter_config_the_filter_rejects() {
    let routes = "[[route]]\nname = \"a\"\nupstream = \"origin\"\n\n[[route.filters]]\nmodule = \"rewrite\"\nconfig = { add_prefix = \"no-slash\" }\n";
    let dir = tempfile::tempdir().unwrap();
    let path = ProxyConfig::new(routes, &["rewrite"]).write(dir.path(), free_port());
    let out = run_cascade(&["check", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("routes/test.toml:6:"), "{stderr}");
    assert!(stderr.contains("must start with '/'"), "{stderr}");
}

/// A filter that panics while checking its config is refused with the
/// place in the config, and the error says what the panic said.
#[test]
fn check_names_the_panic_of_a_filter_that_panics_on_its_config() {
    let routes = misbehave_route("a", "/", "fail-closed", "{ panic_in_new = true }");
    let dir = tempfile::tempdir().unwrap();
    let path = ProxyConfig::new(&routes, &["misbehave"]).write(dir.path(), free_port());
    let out = run_cascade(&["check", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("routes/test.toml:") && stderr.contains("check-config (trap)"), "{stderr}");
    assert!(
        stderr.contains("; it logged: panicked at") && stderr.contains("misbehave: asked to panic in new"),
        "{stderr}"
    );
}

#[test]
fn missing_module_is_refused_at_start() {
    let routes = "[[route]]\nname = \"a\"\nupstream = \"origin\"\n\n[[route.filters]]\nmodule = \"nosuch\"\n";
    let failure = Proxy::try_start(&ProxyConfig::new(routes, &["rewrite"])).err().expect("must not start");
    assert!(!failure.status.success());
    assert!(failure.stderr.contains("module \"nosuch\" is not loaded"), "{}", failure.stderr);
    assert!(failure.stderr.contains("routes/test.toml:6:"), "{}", failure.stderr);
}

#[test]
fn non_filter_wasm_is_refused_at_start_naming_it() {
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let empty_component = b"\0asm\x0d\0\x01\0".to_vec();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("core", core_module, "is a core WebAssembly module, not a component"),
        ("garbage", b"hello world".to_vec(), "not a WebAssembly binary"),
        ("other_world", empty_component, "is not a cascade:filter component"),
        ("my.filter", std::fs::read(wasm("noop")).unwrap(), "is not valid"),
    ];
    for (name, bytes, expected) in cases {
        let config = ProxyConfig::new("", &[]).with_module(name, bytes);
        let failure = Proxy::try_start(&config).err().expect("must not start");
        assert!(!failure.status.success());
        assert!(failure.stderr.contains(&format!("{name:?}")), "{}", failure.stderr);
        assert!(failure.stderr.contains(expected), "{}", failure.stderr);
        // The error names the file, too.
        assert!(failure.stderr.contains(&format!("modules/{name}.wasm: ")), "{}", failure.stderr);
    }
}

/// `noop` has no `on_response`: after its first response the host stops
/// calling it there, fresh or reused. `misbehave`, in the same chain, edits
/// every response in its `on_response`.
#[test]
fn a_filter_without_a_response_phase_is_called_on_one_response_only() {
    let routes = r#"
[[route]]
name = "fresh"
path_prefix = "/fresh"
upstream = "origin"
[[route.filters]]
module = "noop"
[[route.filters]]
module = "misbehave"

[[route]]
name = "reused"
path_prefix = "/reused"
upstream = "origin"
[[route.filters]]
module = "noop"
reuse_instances = true
"#;
    let proxy = Proxy::start(&ProxyConfig::new(routes, &["noop", "misbehave"]).with_admin());
    for path in ["/fresh", "/reused"] {
        for _ in 0..5 {
            let reply = proxy.get(path, &[]);
            assert_eq!(reply.status, 200, "{reply:?}");
            if path == "/fresh" {
                assert_eq!(reply.header("x-misbehave"), Some("response"), "misbehave's on_response ran: {reply:?}");
            }
        }
    }
    // A request's timings are recorded together, so once all ten requests
    // show, so do all their response calls.
    let metrics = proxy.wait_for_metrics(&[
        "cascade_filter_duration_seconds_count{module=\"noop\",phase=\"on-request\"} 10\n",
        "cascade_filter_duration_seconds_count{module=\"misbehave\",phase=\"on-response\"} 5\n",
    ]);
    // Once per chain entry: one route's entry does not tell another's.
    let line = "cascade_filter_duration_seconds_count{module=\"noop\",phase=\"on-response\"} 2\n";
    assert!(metrics.contains(line), "noop's on-response ran more than once per entry:\n{metrics}");
}

/// The SDK answers std's WASI stdio, environment and exit inside the
/// component (guest-sdk/src/wasi_stdio.rs), so a filter built with it imports
/// none of them, and a fresh instance wires none of them up. A component
/// built without the SDK still gets them from the host.
#[test]
fn sdk_filters_import_no_wasi_stdio() {
    let engine = wasmtime::Engine::default();
    let imports = |name: &str| -> Vec<String> {
        let component = wasmtime::component::Component::from_file(&engine, wasm(name)).unwrap();
        component.component_type().imports(&engine).map(|(import, _)| import.to_string()).collect()
    };
    // Pollables stay the host's: its clocks make them (`std::thread::sleep`).
    let stdio = |import: &String| {
        ["wasi:cli/", "wasi:io/streams", "wasi:io/error"].iter().any(|stdio| import.starts_with(stdio))
    };
    for name in ["noop", "auth", "rate_limit", "ab_test", "rewrite", "misbehave"] {
        let imports = imports(name);
        assert!(!imports.iter().any(stdio), "{name} imports {imports:?}");
        assert!(imports.iter().any(|import| import.starts_with("cascade:filter/types")), "{name}: {imports:?}");
    }
    let imports = imports("contract_0_1_0");
    assert!(imports.iter().any(stdio), "the contract fixture, built without the SDK: {imports:?}");
}

/// What std's stdio and environment do in an SDK filter: writes are taken
/// (and dropped, as the host would), stdin is at its end, no stream is a
/// terminal, there are no environment variables, and a sleep on the host's
/// clock still sleeps. `exit` ends only that request, as a trap (the SDK's
/// stand-in traps where the host would have named the exit status).
#[test]
fn std_stdio_in_a_filter_behaves_as_the_host_would() {
    // Room for the sleep, and for a debug build on a loaded machine: a
    // timeout would hide what the filter did.
    let mut routes = misbehave_route("stdio", "/stdio", "fail-closed", r#"{ on_request = "stdio" }"#);
    routes.push_str("timeout_ms = 5000\n");
    routes.push_str(&misbehave_route("exit", "/exit", "fail-closed", r#"{ on_request = "exit" }"#));
    routes.push_str("timeout_ms = 5000\n");
    let proxy = Proxy::start(&ProxyConfig::new(&routes, &["misbehave"]));
    let reply = proxy.get("/stdio", &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json()["headers"]["x-misbehave-stdio"],
        "stdout=true stderr=true stdin=0 terminal=false env=0 slept=true"
    );
    let exited = proxy.get("/exit", &[]);
    assert_eq!(exited.status, 500, "{exited:?}");
    let error = exited.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("trap") && error.contains("unreachable"), "{error}");
    assert_eq!(proxy.get("/stdio", &[]).status, 200);
}

/// A filter's header limit counts as admission does: many cookie lines
/// (admitted as one header) leave a filter room to add its own. A request
/// past the route's own filter limit (`limits.max_headers` below
/// `server.max_headers`) gets the filter's 431, not a failure of the filter
/// that a client could repeat until the route's breaker opened.
#[test]
fn cookie_lines_count_as_one_for_filters_and_a_full_request_gets_431() {
    let config = ProxyConfig::new(REWRITE_ROUTE, &["rewrite"]).with_main("\n[limits]\nmax_headers = 20\n");
    let proxy = Proxy::start(&config);
    let request =
        |headers: &str| format!("GET /api/a HTTP/1.1\r\nhost: example.com\r\n{headers}connection: close\r\n\r\n");
    let cookies = "cookie: a=1\r\n".repeat(40);
    let (status, answer) = send_raw(proxy.port, &request(&cookies));
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"x-edge\":\"cascade\""), "{answer}");
    let many: String = (0..30).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let (status, answer) = send_raw(proxy.port, &request(&many));
    assert_eq!(status, 431, "{answer}");
    assert!(answer.contains("request header fields too large"), "{answer}");
}

/// A listen address another process holds, or two of the config's own
/// that overlap, stop start-up with the key and the address, instead of a
/// process that runs on and serves nothing on one of them.
#[test]
fn a_busy_listen_port_stops_start_up_naming_it() {
    // What `serve` says on its way out; it must not stay up.
    let start_up_error = |path: &std::path::Path| {
        let mut child = std::process::Command::new(cascade_bin())
            .args(["serve", "--config", path.to_str().unwrap()])
            .env("CASCADE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let status = exit_of(&mut child);
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{stderr}");
        stderr
    };
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let path = ProxyConfig::new(REWRITE_ROUTE, &["rewrite"]).write(dir.path(), port);
    let stderr = start_up_error(&path);
    assert!(stderr.contains(&format!("server.listen 127.0.0.1:{port}: cannot listen")), "{stderr}");
    drop(held);

    // Two of its own addresses that overlap: each alone is free.
    let port = free_port();
    let path = ProxyConfig::new(REWRITE_ROUTE, &["rewrite"]).with_admin().write(dir.path(), port);
    let text = std::fs::read_to_string(&path).unwrap();
    let admin_line = text.lines().find(|l| l.starts_with("listen = ") && !l.contains(&port.to_string())).unwrap();
    std::fs::write(&path, text.replace(admin_line, &format!("listen = \"0.0.0.0:{port}\""))).unwrap();
    let stderr = start_up_error(&path);
    assert!(stderr.contains(&format!("admin.listen 0.0.0.0:{port}: cannot listen")), "{stderr}");
}

/// On SIGTERM the proxy stops accepting, and a request in flight still gets
/// its answer; the process exits as soon as none is left, long before the
/// grace period ends, however many idle keep-alive clients it has.
#[test]
fn sigterm_lets_a_request_in_flight_finish_then_exits() {
    use std::io::{Read, Write};
    let (arrived, arrival) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (arrived, released) = (std::sync::Mutex::new(arrived), std::sync::Mutex::new(released));
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let origin = raw_origin(move |stream| {
        // The first request is answered at once; the second is held until
        // the test releases it, after the signal.
        if answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
            arrived.lock().unwrap().send(()).unwrap();
            let _ = released.lock().unwrap().recv();
        }
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nslow");
    });
    let mut config = ProxyConfig::over(origin, "[[route]]\nname = \"slow\"\nupstream = \"origin\"\n").with_admin();
    // An hour: only the drain can end it within the test.
    config.server_extra.push_str("shutdown_grace_secs = 3600\n");
    let mut proxy = Proxy::start(&config);

    // A keep-alive client, idle once it has its answer.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    idle.write_all(b"GET /slow HTTP/1.1\r\nhost: example.com\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.ends_with(b"slow") {
        let n = idle.read(&mut buf).unwrap();
        assert!(n > 0, "the keep-alive client's answer was cut: {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }

    let url = proxy.url("/slow");
    let client = std::thread::spawn(move || send("GET", &url, &[]));
    arrival.recv().unwrap();
    proxy.wait_for_metrics(&["cascade_requests_in_flight 1\n"]);
    proxy.signal("TERM");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(proxy.is_running(), "the proxy exited with a request in flight");
    release.send(()).unwrap();
    let reply = client.join().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "slow");
    let status = proxy.wait_for_exit();
    assert!(status.success(), "{status:?}");
    assert!(!proxy.log_lines("nothing in flight, exiting").is_empty());
}
