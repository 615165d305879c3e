//! Outbound requests from filters (`outbound.fetch`), driven through the
//! shipped `auth-request` filter: it asks an auth service, an upstream
//! group of the config, before a request goes on. The auth service is the
//! echo origin, told how to answer by the `x-echo-*` headers the filter
//! forwards to it from the client's request.

use crate::support::*;

/// Headers the filter forwards to the auth service: the echo origin
/// answers with the status, headers and delay they ask for.
const FORWARDED: &str = r#"["x-echo-status", "x-echo-header", "x-echo-delay-ms"]"#;

/// A route at `/<name>/` whose one filter is auth-request against group
/// `group`, which the entry may reach when `granted`.
fn auth_route(name: &str, group: &str, granted: bool, extra: &str) -> String {
    let outbound = if granted { format!("outbound = [\"{group}\"]\n") } else { String::new() };
    format!(
        "[[route]]\nname = \"{name}\"\npath_prefix = \"/{name}/\"\nupstream = \"origin\"\n\
         [[route.filters]]\nmodule = \"auth_request\"\n{outbound}\
         config = {{ upstream = \"{group}\", path = \"/check\", forward_headers = {FORWARDED}, \
         identity_headers = [\"x-user\"]{extra} }}\n\n"
    )
}

/// The echo origin as group `auth` too, with the default timeouts; as
/// `impatient`, which waits a second for an answer, and `patient`, a
/// minute; `down`, where nothing listens.
fn config(routes: &str) -> ProxyConfig {
    let mut config = ProxyConfig::new(routes, &["auth_request"]);
    let nothing_listens = free_port();
    config.main_extra.push_str(&format!(
        "[upstreams.auth]\nservers = [\"{origin}\"]\n\n\
         [upstreams.impatient]\nservers = [\"{origin}\"]\nread_timeout_ms = 1000\n\n\
         [upstreams.patient]\nservers = [\"{origin}\"]\nread_timeout_ms = 60000\n\n\
         [upstreams.down]\nservers = [\"127.0.0.1:{nothing_listens}\"]\n",
        origin = origin()
    ));
    config
}

#[test]
fn the_auth_services_answer_decides_and_its_identity_reaches_the_origin() {
    let proxy = Proxy::start(&config(&auth_route("app", "auth", true, "")));

    // A 2xx: on to the origin, with the service's x-user, not the client's.
    let reply = proxy.get("/app/x", &[("x-echo-header", "x-user: alice"), ("x-user", "mallory")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["headers"]["x-user"], "alice", "{}", reply.body);
    assert_eq!(reply.json()["path"], "/app/x", "{}", reply.body);

    // A 2xx without an identity: the client's copy is gone all the same.
    let reply = proxy.get("/app/x", &[("x-user", "mallory")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.json()["headers"].get("x-user").is_none(), "{}", reply.body);

    // A 401: the client's answer, with the service's challenge; the origin
    // never sees the request.
    let reply = proxy.get("/app/x", &[("x-echo-status", "401"), ("x-echo-header", "www-authenticate: Bearer")]);
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{reply:?}");
    assert_eq!(reply.header("x-origin"), None, "{reply:?}");
    assert!(reply.body.contains("\"path\":\"/check\""), "the service's own answer: {}", reply.body);
}

/// The filter's deadline bounds its own run time; the fetch is bounded by
/// the group's timeouts. An auth service answering in 300 ms passes a
/// filter with the default 50 ms deadline.
#[test]
fn a_fetchs_wait_does_not_count_toward_the_filters_deadline() {
    let proxy = Proxy::start(&config(&auth_route("app", "auth", true, "")));
    let reply = proxy.get("/app/slow", &[("x-echo-delay-ms", "300"), ("x-echo-header", "x-user: bob")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["headers"]["x-user"], "bob", "{}", reply.body);
}

/// Unreachable or too slow, the service gets a 503 from the filter, or,
/// with `allow_when_unavailable`, lets the request through without any
/// identity: a fail-open that does not let a client's own `x-user` pass.
#[test]
fn a_service_that_cannot_answer_gets_503_or_a_pass_without_identity() {
    let routes = [
        auth_route("closed", "down", true, ""),
        auth_route("open", "down", true, ", allow_when_unavailable = true"),
        auth_route("slow", "impatient", true, ""),
    ]
    .concat();
    let proxy = Proxy::start(&config(&routes).with_admin());

    let reply = proxy.get("/closed/x", &[("x-user", "mallory")]);
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.header("x-origin"), None, "{reply:?}");
    proxy.wait_for_log_line(&["auth service \"down\"", "unreachable"]);

    let reply = proxy.get("/open/x", &[("x-user", "mallory")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.json()["headers"].get("x-user").is_none(), "{}", reply.body);

    // Past the group's 1 s read timeout.
    let reply = proxy.get("/slow/x", &[("x-echo-delay-ms", "3000")]);
    assert_eq!(reply.status, 503, "{reply:?}");
    proxy.wait_for_log_line(&["auth service \"impatient\"", "no answer within"]);

    // And the proxy goes on serving.
    let reply = proxy.get("/slow/x", &[("x-echo-header", "x-user: carol")]);
    assert_eq!(reply.json()["headers"]["x-user"], "carol", "{}", reply.body);

    let series = |group: &str, outcome: &str, n: u32| {
        format!(
            "cascade_filter_fetches_total{{module=\"auth_request\",upstream=\"{group}\",outcome=\"{outcome}\"}} {n}\n"
        )
    };
    let lines =
        [series("down", "unreachable", 2), series("impatient", "timeout", 1), series("impatient", "answered", 1)];
    proxy.wait_for_metrics(&lines.each_ref().map(String::as_str));
}

/// A filter reaches only the groups its entry's `outbound` names, and a
/// route file naming a group that does not exist is refused at load.
#[test]
fn a_filter_fetches_only_from_the_groups_it_was_granted() {
    let proxy = Proxy::start(&config(&auth_route("app", "auth", false, "")));
    let reply = proxy.get("/app/x", &[("x-echo-header", "x-user: alice")]);
    assert_eq!(reply.status, 500, "a mistake, not an outage: {reply:?}");
    proxy.wait_for_log_line(&["not granted", "outbound does not name \"auth\""]);

    let routes =
        auth_route("app", "auth", true, "").replace("outbound = [\"auth\"]", "outbound = [\"auth\", \"nope\"]");
    let failure = Proxy::try_start(&config(&routes)).err().expect("must not start");
    assert!(failure.stderr.contains("route.filters.outbound"), "{}", failure.stderr);
    assert!(failure.stderr.contains("\"nope\" is not an upstream group"), "{}", failure.stderr);
}

/// A route at `/<name>/` whose one filter is the misbehave fixture, granted
/// `group` and fetching from it as `behaviour` says: a fetch that takes
/// 600 ms, or a fetch and then a 30 s sleep.
fn misbehave_route(name: &str, group: &str, behaviour: &str, extra: &str) -> String {
    let spin_ms = if behaviour == "fetch-then-sleep" { 30_000 } else { 600 };
    format!(
        "[[route]]\nname = \"{name}\"\npath_prefix = \"/{name}/\"\nupstream = \"origin\"\n\
         [[route.filters]]\nmodule = \"misbehave\"\noutbound = [\"{group}\"]\n{extra}\
         config = {{ on_request = \"{behaviour}\", fetch_from = \"{group}\", spin_ms = {spin_ms} }}\n\n"
    )
}

/// Eight fetches per call, and the ninth is refused; a filter that loops
/// or sleeps after a fetch is still stopped by its deadline, which the
/// fetch's wait (600 ms, past the loop's 500 ms deadline) did not use up.
#[test]
fn fetches_are_limited_per_call_and_the_deadline_still_stops_a_loop() {
    let routes = [
        misbehave_route("many", "auth", "fetch-many", "timeout_ms = 5000\n"),
        misbehave_route("loop", "auth", "fetch-then-loop", "timeout_ms = 500\n"),
        misbehave_route("sleep", "patient", "fetch-then-sleep", "timeout_ms = 1000\n"),
    ]
    .concat();
    let proxy = Proxy::start(&config(&routes).with_built_module("misbehave"));

    let reply = proxy.get("/many/x", &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let fetched = reply.json()["headers"]["x-misbehave-fetched"].as_str().unwrap().to_string();
    assert_eq!(fetched, format!("{}limit", "200,".repeat(8)), "{}", reply.body);

    let reply = proxy.get("/loop/x", &[]);
    assert_eq!(reply.status, 500, "{reply:?}");
    let error = reply.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("ran past its 500ms CPU deadline"), "stopped while running, not waiting: {error}");

    // After a fetch to a group that may take a minute, the call's own
    // 30 s sleep is cut at its 1 s deadline, not at the fetch's minute.
    let reply = proxy.get("/sleep/x", &[]);
    assert_eq!(reply.status, 500, "{reply:?}");
    let error = reply.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("waited past its 1s deadline"), "{error}");
}
