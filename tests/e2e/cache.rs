//! The edge cache, through the real proxy and a real origin: a suite of the
//! main rules of RFC 9111 (section numbers in each test), plus collapsing,
//! `Cache-Status` (RFC 9211), route policies, purging and the size bound.
//!
//! Each test has its own echo origin, so `origin.requests()` counts exactly
//! what reached it. The echo origin sends the response headers a request asks
//! for in `x-echo-header` (several separated by `|`).

use std::time::Duration;

use crate::support::*;

const ROUTE: &str = "[[route]]\nname = \"site\"\nupstream = \"origin\"\n";

fn cached(routes: &str) -> (EchoOrigin, Proxy) {
    let origin = EchoOrigin::start().unwrap();
    let proxy = Proxy::start(&ProxyConfig::over(origin.addr(), routes).with_node_id("edge").with_admin());
    (origin, proxy)
}

/// GET `path`, asking the origin to answer with `headers` (`name: value|...`).
fn get_with(proxy: &Proxy, path: &str, origin_headers: &str, extra: &[(&str, &str)]) -> Reply {
    let mut headers = vec![("x-echo-header", origin_headers)];
    headers.extend_from_slice(extra);
    let reply = proxy.get(path, &headers);
    assert!(reply.header("cache-status").is_some(), "every response has Cache-Status: {reply:?}");
    reply
}

fn cache_status(reply: &Reply) -> &str {
    reply.header("cache-status").unwrap_or_default()
}

/// A hit's freshness left (`Cache-Status` ttl) and its `Age`, in seconds.
fn hit_ttl_and_age(hit: &Reply) -> (i64, u64) {
    let status = cache_status(hit);
    assert!(status.starts_with("edge; hit; ttl="), "not a hit: {hit:?}");
    let ttl = status.split("ttl=").nth(1).and_then(|t| t.split(';').next()).unwrap().parse().unwrap();
    (ttl, hit.header("age").unwrap().parse().unwrap())
}

// RFC 9111 section 4.2 (fresh responses are served without contacting the
// origin), 5.1 (Age), RFC 9211 (hit, fwd=miss, stored).
#[test]
fn fresh_response_is_served_from_cache_with_age() {
    let (origin, proxy) = cached(ROUTE);
    let first = get_with(&proxy, "/a?x=1", "cache-control: max-age=60", &[]);
    assert_eq!(first.status, 200);
    assert_eq!(cache_status(&first), "edge; fwd=miss; stored");
    let second = get_with(&proxy, "/a?x=1", "cache-control: max-age=60", &[]);
    assert_eq!(second.status, 200);
    assert!(cache_status(&second).starts_with("edge; hit; ttl="), "{second:?}");
    assert_eq!(origin_count(&second), origin_count(&first), "the body came from the cache");
    assert!(second.header("age").is_some(), "a cached response carries Age");
    assert_eq!(origin.requests(), 1);
    // Another query string is another resource.
    get_with(&proxy, "/a?x=2", "cache-control: max-age=60", &[]);
    assert_eq!(origin.requests(), 2);
    proxy.wait_for_metrics(&["cascade_cache_requests_total{route=\"site\",result=\"hit\"} 1"]);
}

// Section 4.2.1: s-maxage overrides max-age in a shared cache; Expires is used
// when neither is present, and an Expires in the past means stale.
#[test]
fn freshness_comes_from_s_maxage_max_age_or_expires() {
    let (origin, proxy) = cached(ROUTE);
    for _ in 0..2 {
        get_with(&proxy, "/s", "cache-control: max-age=0, s-maxage=60", &[]);
        get_with(&proxy, "/future", "expires: Thu, 01 Jan 2099 00:00:00 GMT", &[]);
        get_with(&proxy, "/past", "expires: Thu, 01 Jan 1970 00:00:00 GMT", &[]);
    }
    // /s and /future once each; /past twice.
    assert_eq!(origin.requests(), 4);
    // Without any freshness information nothing is stored.
    for _ in 0..2 {
        let reply = proxy.get("/plain", &[]);
        assert!(!cache_status(&reply).contains("stored"), "{reply:?}");
    }
    assert_eq!(origin.requests(), 6);
}

// Section 3: no-store and private forbid a shared cache to store.
#[test]
fn no_store_and_private_are_never_stored() {
    let (origin, proxy) = cached(ROUTE);
    for _ in 0..2 {
        let reply = get_with(&proxy, "/ns", "cache-control: no-store, max-age=60", &[]);
        assert!(cache_status(&reply).starts_with("edge; fwd=miss"), "{reply:?}");
        assert!(!cache_status(&reply).contains("stored"));
        get_with(&proxy, "/pr", "cache-control: private, max-age=60", &[]);
    }
    assert_eq!(origin.requests(), 4);
    // A request that says no-store is not answered from, or stored in, the cache.
    get_with(&proxy, "/ok", "cache-control: max-age=60", &[]);
    let reply = get_with(&proxy, "/ok", "cache-control: max-age=60", &[("cache-control", "no-store")]);
    assert_eq!(cache_status(&reply), "edge; fwd=bypass");
    assert_eq!(origin.requests(), 6);
}

// Section 4.1: a stored response is used only for requests whose headers
// named by Vary match.
#[test]
fn vary_keeps_variants_apart() {
    let (origin, proxy) = cached(ROUTE);
    let headers = "cache-control: max-age=60|vary: accept-language";
    let en = get_with(&proxy, "/v", headers, &[("accept-language", "en")]);
    let fr = get_with(&proxy, "/v", headers, &[("accept-language", "fr")]);
    assert_ne!(origin_count(&en), origin_count(&fr));
    let en_again = get_with(&proxy, "/v", headers, &[("accept-language", "en")]);
    let fr_again = get_with(&proxy, "/v", headers, &[("accept-language", "fr")]);
    assert_eq!(origin_count(&en_again), origin_count(&en));
    assert_eq!(origin_count(&fr_again), origin_count(&fr));
    assert!(cache_status(&fr_again).contains("hit"));
    assert_eq!(origin.requests(), 2);
}

// Section 4.3: a stale response is revalidated with a conditional request
// (If-None-Match from its ETag), and a 304 refreshes it without a new body.
#[test]
fn stale_response_is_revalidated_with_etag() {
    let (origin, proxy) = cached(ROUTE);
    let headers = "cache-control: max-age=1|etag: \"v1\"";
    let first = get_with(&proxy, "/r", headers, &[]);
    std::thread::sleep(Duration::from_millis(2_100));
    let second = get_with(&proxy, "/r", headers, &[]);
    assert_eq!(second.status, 200);
    assert_eq!(origin.requests(), 2, "the origin was asked again");
    assert_eq!(origin_count(&second), origin_count(&first), "but answered 304, so the stored body is served");
    assert_eq!(cache_status(&second), "edge; fwd=stale; fwd-status=304; stored");
    let third = get_with(&proxy, "/r", headers, &[]);
    assert!(cache_status(&third).contains("hit"), "fresh again after revalidation: {third:?}");
    assert_eq!(origin.requests(), 2);
}

// RFC 9111 section 4.3.4: a 304 that says how old it is (a regional tier's
// copy) renews the entry for the rest of that lifetime only.
#[test]
fn a_revalidation_counts_the_304s_age() {
    let (origin, proxy) = cached(ROUTE);
    get_with(&proxy, "/r", "cache-control: max-age=1|etag: \"v1\"", &[]);
    std::thread::sleep(Duration::from_millis(2_100));
    let renewed = "cache-control: max-age=100|etag: \"v1\"|age: 60";
    let second = get_with(&proxy, "/r", renewed, &[]);
    assert_eq!(cache_status(&second), "edge; fwd=stale; fwd-status=304; stored");
    let hit = get_with(&proxy, "/r", renewed, &[]);
    let (ttl, age) = hit_ttl_and_age(&hit);
    assert!(ttl <= 40, "forty seconds were left, not a hundred: {hit:?}");
    assert!(age >= 60, "the hit's Age counts on from the 304's: {hit:?}");
    assert_eq!(origin.requests(), 2);
}

// The same with Last-Modified and If-Modified-Since.
#[test]
fn stale_response_is_revalidated_with_last_modified() {
    let (origin, proxy) = cached(ROUTE);
    let headers = "cache-control: max-age=1|last-modified: Tue, 24 Nov 2026 10:00:00 GMT";
    let first = get_with(&proxy, "/lm", headers, &[]);
    std::thread::sleep(Duration::from_millis(2_100));
    let second = get_with(&proxy, "/lm", headers, &[]);
    assert_eq!(origin.requests(), 2);
    assert_eq!(origin_count(&second), origin_count(&first));
    assert!(cache_status(&second).contains("fwd-status=304"), "{second:?}");
}

// Section 3.5: a response to a request with Authorization is stored only when
// the response says public, s-maxage or must-revalidate.
#[test]
fn authorized_requests_are_stored_only_when_allowed() {
    let (origin, proxy) = cached(ROUTE);
    let auth = [("authorization", "Bearer t")];
    for _ in 0..2 {
        get_with(&proxy, "/mine", "cache-control: max-age=60", &auth);
    }
    assert_eq!(origin.requests(), 2);
    for _ in 0..2 {
        get_with(&proxy, "/shared", "cache-control: public, max-age=60", &auth);
    }
    assert_eq!(origin.requests(), 3);
}

// Only GET and HEAD are cached.
#[test]
fn unsafe_methods_are_not_cached() {
    let (origin, proxy) = cached(ROUTE);
    for _ in 0..2 {
        let reply = send("POST", &proxy.url("/post"), &[("x-echo-header", "cache-control: max-age=60")]);
        assert_eq!(cache_status(&reply), "edge; fwd=bypass");
    }
    assert_eq!(origin.requests(), 2);
}

// Concurrent misses on one key make one upstream fetch (the cache lock).
#[test]
fn concurrent_misses_collapse_into_one_fetch() {
    let (origin, proxy) = cached(ROUTE);
    let url = proxy.url("/collapse");
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                send("GET", &url, &[("x-echo-header", "cache-control: max-age=60"), ("x-echo-delay-ms", "500")])
            })
        })
        .collect();
    let replies: Vec<Reply> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(replies.iter().all(|r| r.status == 200), "{replies:?}");
    assert_eq!(origin.requests(), 1, "ten concurrent misses, one fetch");
}

// RFC 5861: stale-while-revalidate answers from the cache at once and
// refreshes in the background.
#[test]
fn stale_while_revalidate_answers_at_once_and_refreshes() {
    let (origin, proxy) = cached(ROUTE);
    let headers = "cache-control: max-age=1, stale-while-revalidate=60";
    let first = get_with(&proxy, "/swr", headers, &[]);
    std::thread::sleep(Duration::from_millis(2_100));
    let stale = get_with(&proxy, "/swr", headers, &[]);
    assert_eq!(origin_count(&stale), origin_count(&first), "the stale copy is served");
    assert!(cache_status(&stale).contains("hit"), "{stale:?}");
    eventually("the background refresh", Duration::from_secs(10), || origin.requests() == 2);
    // The refresh is counted as one, not as a client's request.
    proxy.wait_for_metrics(&[
        "cascade_cache_refreshes_total 1",
        "cascade_requests_total{route=\"site\",status=\"200\"} 2",
    ]);
    eventually("the refreshed copy", Duration::from_secs(10), || {
        origin_count(&get_with(&proxy, "/swr", headers, &[])) == 2
    });
}

// RFC 5861 over HTTP/2, on a route whose filter rewrites the path: the
// background refresh replays the request as the client sent it, so the
// filters run once on it, as on the first fetch. (Replayed with the path
// already rewritten, it would match no route and never reach the origin.)
#[test]
fn stale_while_revalidate_refreshes_an_http2_request_through_its_filters() {
    let origin = EchoOrigin::start().unwrap();
    let fixtures = root().join("tests/fixtures/tls");
    let tls_port = free_port();
    let routes = "[[route]]\nname = \"site\"\npath_prefix = \"/swr\"\nupstream = \"origin\"\n\
                  [[route.filters]]\nmodule = \"rewrite\"\nconfig = { strip_prefix = \"/swr\" }\n";
    let config = ProxyConfig::over(origin.addr(), routes)
        .with_node_id("edge")
        .with_built_module("rewrite")
        .with_tls(tls_port, &fixtures);
    let _proxy = Proxy::start(&config);
    let url = format!("https://localhost:{tls_port}/swr/page");
    // The response head and body, then the HTTP version, over HTTP/2.
    let h2_get = || {
        let out = std::process::Command::new("curl")
            .args(["-sk", "--http2", "--retry", "5", "--retry-connrefused", "-D", "-"])
            .args(["-H", "x-echo-header: cache-control: max-age=1, stale-while-revalidate=60"])
            .args(["-w", "%{http_version}", &url])
            .output()
            .expect("curl is installed");
        String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
    };
    let first = h2_get();
    assert!(first.starts_with("http/2 200") && first.ends_with('2'), "{first}");
    assert_eq!(origin.requests(), 1);
    std::thread::sleep(Duration::from_millis(2_100));
    let stale = h2_get();
    assert!(stale.contains("cache-status: edge; hit"), "the stale copy is served: {stale}");
    eventually("the background refresh reaching the origin", Duration::from_secs(10), || origin.requests() == 2);
    // The refreshed entry is served next, and the filter ran once on the
    // replay: the origin saw the rewritten path, as on the first fetch.
    eventually("the refreshed copy", Duration::from_secs(10), || {
        let fresh = h2_get();
        fresh.contains("cache-status: edge; hit") && fresh.contains("\"count\":2")
    });
    let fresh = h2_get();
    assert!(fresh.contains("\"path\":\"/page\""), "{fresh}");
}

// A background refresh is not a client's request: it takes no rate-limit
// tokens (nginx's limit_req skips subrequests too), so a client that spent its
// last token on the stale answer still gets the entry refreshed.
#[test]
fn a_background_refresh_takes_no_rate_limit_tokens() {
    let origin = EchoOrigin::start().unwrap();
    let routes = "[[route]]\nname = \"site\"\nupstream = \"origin\"\n\
                  [[route.filters]]\nmodule = \"rate_limit\"\nconfig = { policy = \"two\", key = \"header:x-client\" }\n";
    let config = ProxyConfig::over(origin.addr(), routes)
        .with_node_id("edge")
        .with_built_module("rate_limit")
        .with_main("\n[rate_limits.two]\nrate = 1\nper = \"hour\"\nburst = 2\n");
    let proxy = Proxy::start(&config);
    let headers = "cache-control: max-age=1, stale-while-revalidate=60";
    let client = [("x-client", "c")];
    assert_eq!(get_with(&proxy, "/r", headers, &client).status, 200);
    std::thread::sleep(Duration::from_millis(2_100));
    let stale = get_with(&proxy, "/r", headers, &client);
    assert!(stale.status == 200 && cache_status(&stale).contains("hit"), "{stale:?}");
    eventually("the background refresh reaching the origin", Duration::from_secs(10), || origin.requests() == 2);
    // The client's own requests did count: its third is refused.
    assert_eq!(proxy.get("/r", &[("x-echo-header", headers), ("x-client", "c")]).status, 429);
}

// Per route: caching off, a TTL override, and a key that ignores some query
// parameters.
#[test]
fn route_policy_turns_caching_off_overrides_ttl_and_shapes_the_key() {
    let routes = "[[route]]\nname = \"off\"\npath_prefix = \"/off\"\nupstream = \"origin\"\n[route.cache]\nenabled = false\n\n\
                  [[route]]\nname = \"ttl\"\npath_prefix = \"/ttl\"\nupstream = \"origin\"\n[route.cache]\nttl_secs = 60\n\
                  ignore_query_params = [\"utm_source\"]\n";
    let (origin, proxy) = cached(routes);
    for _ in 0..2 {
        let reply = get_with(&proxy, "/off", "cache-control: max-age=60", &[]);
        assert_eq!(cache_status(&reply), "edge; fwd=bypass");
    }
    assert_eq!(origin.requests(), 2);
    // The origin sends no freshness at all; the route's TTL applies.
    let first = proxy.get("/ttl/a?utm_source=mail&id=1", &[]);
    let second = proxy.get("/ttl/a?utm_source=web&id=1", &[]);
    assert_eq!(origin_count(&second), origin_count(&first));
    assert!(cache_status(&second).contains("hit"), "{second:?}");
    proxy.get("/ttl/a?id=2", &[]);
    assert_eq!(origin.requests(), 4);
    // no-store still wins over the override.
    for _ in 0..2 {
        get_with(&proxy, "/ttl/ns", "cache-control: no-store", &[]);
    }
    assert_eq!(origin.requests(), 6);
}

// An A/B test in front of the cache: the variant header the filter sets is
// part of the key (`key_headers`), so each variant is cached once and no
// client is served the other variant's page.
#[test]
fn key_headers_keep_ab_variants_apart() {
    let routes = "[[route]]\nname = \"ab\"\nupstream = \"origin\"\n[route.cache]\nttl_secs = 60\nkey_headers = [\"x-ab-variant\"]\n\
                  [[route.filters]]\nmodule = \"ab_test\"\n\
                  config = { experiment = \"home\", key = \"header:x-user-id\", variants = [{ name = \"a\", weight = 1 }, { name = \"b\", weight = 1 }] }\n";
    let origin = EchoOrigin::start().unwrap();
    let proxy = Proxy::start(&ProxyConfig::over(origin.addr(), routes).with_built_module("ab_test"));
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..20 {
        let reply = proxy.get("/page", &[("x-user-id", &format!("user-{user}"))]);
        assert_eq!(reply.status, 200, "{reply:?}");
        let cookie = reply.header("set-cookie").expect("a first assignment sets the cookie");
        let assigned = cookie.strip_prefix("ab-home=").and_then(|c| c.split(';').next()).unwrap().to_string();
        // What the origin saw for the page this client got, cached or not.
        assert_eq!(reply.json()["headers"]["x-ab-variant"], assigned.as_str(), "user-{user}: {reply:?}");
        seen.insert(assigned);
    }
    assert_eq!(seen.len(), 2, "20 users should meet both variants");
    assert_eq!(origin.requests(), 2, "one origin request per variant");
}

#[test]
fn purge_by_url_and_by_prefix() {
    let (origin, proxy) = cached(ROUTE);
    let headers = "cache-control: max-age=60";
    for path in ["/p/a", "/p/b", "/q"] {
        get_with(&proxy, path, headers, &[]);
    }
    assert_eq!(origin.requests(), 3);
    let host = format!("127.0.0.1:{}", proxy.port);
    let purge = |body: String| proxy.admin("POST", "/cache/purge", body.as_bytes(), None);

    let reply = purge(format!("{{\"url\": \"http://{host}/p/a\"}}"));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["purged"], 1);
    get_with(&proxy, "/p/a", headers, &[]);
    get_with(&proxy, "/p/b", headers, &[]);
    assert_eq!(origin.requests(), 4, "only /p/a was fetched again");

    let reply = purge(format!("{{\"prefix\": \"{host}/p/\"}}"));
    assert_eq!(reply.json()["purged"], 2, "{reply:?}");
    get_with(&proxy, "/p/a", headers, &[]);
    get_with(&proxy, "/p/b", headers, &[]);
    let q = get_with(&proxy, "/q", headers, &[]);
    assert!(cache_status(&q).contains("hit"));
    assert_eq!(origin.requests(), 6);

    // Bad requests get a clear error and change nothing.
    assert_eq!(purge("{\"url\": \"a\", \"prefix\": \"b\"}".into()).status, 400);
    assert_eq!(purge("not json".into()).status, 400);
    assert_eq!(purge("{\"prefix\": \"\"}".into()).status, 400);
    let wrong = proxy.admin("POST", "/cache/purge", format!("{{\"prefix\": \"{host}\"}}").as_bytes(), Some("nope"));
    assert_eq!(wrong.status, 401);
    assert!(cache_status(&get_with(&proxy, "/q", headers, &[])).contains("hit"));
}

// Memory stays within [cache] max_size_mb: the least recently used entries go.
#[test]
fn memory_is_bounded_by_max_size() {
    let origin = EchoOrigin::start().unwrap();
    let config = ProxyConfig::over(origin.addr(), ROUTE).with_admin().with_main("\n[cache]\nmax_size_mb = 1\n");
    let proxy = Proxy::start(&config);
    for i in 0..40 {
        let reply = proxy.get(
            &format!("/big/{i}"),
            &[("x-echo-header", "cache-control: max-age=600"), ("x-echo-body-bytes", "65536")],
        );
        assert_eq!(reply.status, 200);
    }
    let metrics = proxy.wait_for_metrics(&["cascade_cache_evictions_total"]);
    let value = |name: &str| metric_value(&metrics, name);
    assert!(value("cascade_cache_evictions_total") >= 20, "{metrics}");
    assert!(value("cascade_cache_size_bytes") <= (1 << 20), "{metrics}");
    // The oldest entry was evicted; the newest is still there.
    let before = origin.requests();
    proxy.get("/big/39", &[("x-echo-header", "cache-control: max-age=600")]);
    assert_eq!(origin.requests(), before);
    proxy.get("/big/0", &[("x-echo-header", "cache-control: max-age=600")]);
    assert_eq!(origin.requests(), before + 1);
}

// A fetch that started before a purge does not put the purged content back.
#[test]
fn a_purge_during_a_fetch_is_not_undone_by_it() {
    let (origin, proxy) = cached(ROUTE);
    let url = proxy.url("/slow");
    let fetch = std::thread::spawn(move || {
        send("GET", &url, &[("x-echo-header", "cache-control: max-age=600"), ("x-echo-delay-ms", "800")])
    });
    // The origin counts the fetch as it arrives, before its 800 ms delay.
    eventually("the fetch reaches the origin", Duration::from_secs(30), || origin.requests() == 1);
    let body = format!("{{\"url\": \"127.0.0.1:{}/slow\"}}", proxy.port);
    assert_eq!(proxy.admin("POST", "/cache/purge", body.as_bytes(), None).status, 200);
    assert_eq!(fetch.join().unwrap().status, 200);
    let after = get_with(&proxy, "/slow", "cache-control: max-age=600", &[]);
    assert!(!cache_status(&after).contains("hit"), "{after:?}");
    assert_eq!(origin.requests(), 2);
}

// A purge cancels only the fetches in flight that it covers: another URL's
// fetch is stored as usual (before, any purge cancelled every fetch, so a
// busy purger kept large objects from ever being cached).
#[test]
fn a_purge_of_another_url_during_a_fetch_does_not_cancel_it() {
    let (origin, proxy) = cached(ROUTE);
    let url = proxy.url("/slow");
    let fetch = std::thread::spawn(move || {
        send("GET", &url, &[("x-echo-header", "cache-control: max-age=600"), ("x-echo-delay-ms", "800")])
    });
    std::thread::sleep(Duration::from_millis(300));
    for body in [
        format!("{{\"url\": \"127.0.0.1:{}/other\"}}", proxy.port),
        format!("{{\"prefix\": \"127.0.0.1:{}/sl/\"}}", proxy.port),
    ] {
        assert_eq!(proxy.admin("POST", "/cache/purge", body.as_bytes(), None).status, 200);
    }
    assert_eq!(fetch.join().unwrap().status, 200);
    let after = get_with(&proxy, "/slow", "cache-control: max-age=600", &[]);
    assert!(cache_status(&after).contains("hit"), "{after:?}");
    assert_eq!(origin.requests(), 1);
}

// A Host the origin sees differently (a port, a trailing dot) gets an entry
// of its own, so an origin's links to `:1337` are never served for the bare
// name; case does not. One purge of the URL removes every spelling.
#[test]
fn host_spellings_are_kept_apart_and_purged_together() {
    let (origin, proxy) = cached(ROUTE);
    let spellings = ["example.com", "EXAMPLE.com", "example.com:1337", "example.com."];
    for host in spellings {
        let reply = get_with(&proxy, "/h", "cache-control: max-age=600", &[("host", host)]);
        assert_eq!(reply.status, 200, "{host}");
    }
    assert_eq!(origin.requests(), 3, "the two spellings that differ in case share an entry");
    let purge = proxy.admin("POST", "/cache/purge", b"{\"url\": \"http://Example.com/h\"}", None);
    assert_eq!(purge.json()["purged"], 3, "{purge:?}");
    for host in spellings {
        get_with(&proxy, "/h", "cache-control: max-age=600", &[("host", host)]);
    }
    assert_eq!(origin.requests(), 6, "a spelling outlived the purge");
}

// Refetching one Vary variant in full does not invalidate the others.
#[test]
fn refetching_one_variant_keeps_the_others() {
    let (origin, proxy) = cached(ROUTE);
    let en =
        get_with(&proxy, "/lang", "cache-control: max-age=600|vary: accept-language", &[("accept-language", "en")]);
    get_with(&proxy, "/lang", "cache-control: max-age=1|vary: accept-language", &[("accept-language", "fr")]);
    std::thread::sleep(Duration::from_millis(2_100));
    let fr = get_with(&proxy, "/lang", "cache-control: max-age=1|vary: accept-language", &[("accept-language", "fr")]);
    assert!(cache_status(&fr).contains("fwd=stale"), "{fr:?}");
    assert_eq!(origin.requests(), 3);
    let en_again =
        get_with(&proxy, "/lang", "cache-control: max-age=600|vary: accept-language", &[("accept-language", "en")]);
    assert!(cache_status(&en_again).contains("hit"), "{en_again:?}");
    assert_eq!(origin_count(&en_again), origin_count(&en));
    assert_eq!(origin.requests(), 3);
}

// RFC 9111 section 4.2.3: a response that was already `Age` seconds old
// when it arrived (from a tier above) is fresh only for the rest of its
// lifetime, and a hit carries its whole age.
#[test]
fn an_upstream_age_counts_toward_freshness() {
    let (origin, proxy) = cached(ROUTE);
    let headers = "cache-control: max-age=60|age: 50";
    let first = get_with(&proxy, "/aged", headers, &[]);
    assert_eq!(cache_status(&first), "edge; fwd=miss; stored");
    let hit = get_with(&proxy, "/aged", headers, &[]);
    let (ttl, age) = hit_ttl_and_age(&hit);
    assert!(ttl <= 10, "ten seconds were left, not sixty: {hit:?}");
    assert!(age >= 50, "the hit's Age counts on from the upstream's: {hit:?}");
    assert_eq!(origin.requests(), 1);
    // Older than its lifetime on arrival: stale at once, so the next request
    // goes to the origin again.
    get_with(&proxy, "/old", "cache-control: max-age=60|age: 120", &[]);
    get_with(&proxy, "/old", "cache-control: max-age=60|age: 120", &[]);
    assert_eq!(origin.requests(), 3);
    // An `Expires` date already says when freshness ends: the age does not
    // shorten it.
    let expires = "expires: Thu, 01 Jan 2099 00:00:00 GMT|age: 100";
    get_with(&proxy, "/dated", expires, &[]);
    let hit = get_with(&proxy, "/dated", expires, &[]);
    assert!(cache_status(&hit).contains("hit"), "{hit:?}");
    assert_eq!(origin.requests(), 4);
}

// A response that sets a cookie belongs to one client: it is never stored,
// with or without a route TTL. A route TTL does not make a `no-cache`
// response fresh either (section 5.2.2.4).
#[test]
fn set_cookie_and_no_cache_responses_are_not_served_from_cache() {
    let routes = "[[route]]\nname = \"site\"\nupstream = \"origin\"\n\n\
                  [[route]]\nname = \"ttl\"\npath_prefix = \"/ttl\"\nupstream = \"origin\"\n[route.cache]\nttl_secs = 60\n";
    let (origin, proxy) = cached(routes);
    for path in ["/login", "/ttl/login"] {
        for _ in 0..2 {
            let reply = get_with(&proxy, path, "cache-control: public, max-age=60|set-cookie: session=alice", &[]);
            assert_eq!(reply.header("set-cookie"), Some("session=alice"));
            assert!(!cache_status(&reply).contains("hit") && !cache_status(&reply).contains("stored"), "{reply:?}");
        }
    }
    assert_eq!(origin.requests(), 4);
    for _ in 0..2 {
        let reply = get_with(&proxy, "/ttl/nc", "cache-control: no-cache", &[]);
        assert!(!cache_status(&reply).contains("hit"), "{reply:?}");
    }
    assert_eq!(origin.requests(), 6);
}

// Section 4.1: every line of a header named by `Vary` selects the variant.
// Over HTTP/2 browsers send each cookie as its own line; two clients whose
// first cookie matches must not share one.
#[test]
fn vary_reads_every_line_of_a_header() {
    let (origin, proxy) = cached(ROUTE);
    let port = proxy.port;
    let request = |session: &str| {
        format!(
            "GET /private HTTP/1.1\r\nhost: 127.0.0.1\r\nx-echo-header: cache-control: public, max-age=60|vary: cookie\r\n\
             cookie: theme=dark\r\ncookie: session={session}\r\nconnection: close\r\n\r\n"
        )
    };
    let (status, alice) = send_raw(port, &request("alice"));
    assert_eq!(status, 200);
    let (_, bob) = send_raw(port, &request("bob"));
    assert_eq!(origin.requests(), 2, "bob's cookies make another variant");
    assert!(bob.contains("session=bob") && alice.contains("session=alice"), "{alice}\n{bob}");
    let (_, alice_again) = send_raw(port, &request("alice"));
    assert_eq!(origin.requests(), 2, "alice's variant is served from the cache");
    assert!(alice_again.contains("session=alice"), "{alice_again}");
}

// A body past `cache.max_object_mb` is served whole and not stored, whether
// the origin declares its length or sends it chunked; one under it is.
#[test]
fn an_object_past_the_size_cap_is_served_whole_and_not_stored() {
    const BIG: usize = 1_572_864;
    let origin = EchoOrigin::start().unwrap();
    let chunked_answers = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answers = chunked_answers.clone();
    let chunked_origin = raw_origin(move |stream| {
        use std::io::Write;
        answers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let head =
            "HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
        let _ = stream.write_all(head.as_bytes());
        let chunk = vec![b'x'; 65_536];
        for _ in 0..BIG / chunk.len() {
            let _ = stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
            let _ = stream.write_all(&chunk);
            let _ = stream.write_all(b"\r\n");
        }
        let _ = stream.write_all(b"0\r\n\r\n");
    });
    let routes =
        format!("{ROUTE}\n[[route]]\nname = \"chunked\"\npath_prefix = \"/chunked\"\nupstream = \"chunked\"\n");
    let config = ProxyConfig::over(origin.addr(), &routes).with_admin().with_main(&format!(
        "\n[upstreams.chunked]\nservers = [\"{chunked_origin}\"]\n\n[cache]\nmax_size_mb = 8\nmax_object_mb = 1\n"
    ));
    let proxy = Proxy::start(&config);
    let get = |path: &str, bytes: usize| {
        let reply = proxy
            .get(path, &[("x-echo-header", "cache-control: max-age=600"), ("x-echo-body-bytes", &bytes.to_string())]);
        assert_eq!(reply.status, 200, "{path}");
        assert!(reply.body.len() >= bytes, "{path}: {} bytes of {bytes}", reply.body.len());
        reply
    };
    // Not stored, and Cache-Status says why. The chunked body's first
    // answer went out before its size was known: it does not claim `stored`.
    for path in ["/big", "/chunked"] {
        let first = get(path, BIG);
        assert!(!cache_status(&first).contains("stored"), "{path}: {:?}", first.header("cache-status"));
        let again = get(path, BIG);
        assert!(cache_status(&again).contains("responsetoolarge"), "{path}: {:?}", again.header("cache-status"));
    }
    assert_eq!(origin.requests(), 2, "a declared body past the cap was stored");
    // A range of one is still a range (a seek in a large video). Once it is
    // known uncacheable, the origin gets the range itself.
    let range = proxy.get(
        "/big-video",
        &[
            ("x-echo-header", "cache-control: max-age=600"),
            ("x-echo-body-bytes", &BIG.to_string()),
            ("range", "bytes=0-9"),
        ],
    );
    assert_eq!((range.status, range.body.len()), (206, 10), "{:?}", range.headers);
    assert_eq!(chunked_answers.load(std::sync::atomic::Ordering::SeqCst), 2, "a chunked body past the cap was stored");
    get("/small", 512 * 1024);
    let hit = get("/small", 512 * 1024);
    assert!(cache_status(&hit).contains("hit"), "{:?}", hit.header("cache-status"));
}

// A conditional miss is answered 304 (RFC 9110, 13.1.2) and still stored:
// Cache-Status says so, though the 304 declares no length.
#[test]
fn a_conditional_miss_says_stored() {
    let (origin, proxy) = cached(ROUTE);
    let origin_headers = "cache-control: max-age=60|etag: \"v1\"";
    let miss = get_with(&proxy, "/conditional", origin_headers, &[("if-none-match", "\"v1\"")]);
    assert_eq!(miss.status, 304, "{miss:?}");
    assert_eq!(cache_status(&miss), "edge; fwd=miss; stored");
    assert!(cache_status(&get_with(&proxy, "/conditional", origin_headers, &[])).starts_with("edge; hit"));
    assert_eq!(origin.requests(), 1);
}

// Requests for an object known to be too large to store are not queued on
// the cache lock behind one another (as a cacheable miss is): they reach the
// origin together. With the lock, the second would wait for the first, which
// this origin holds until a second request arrives.
#[test]
fn requests_for_an_object_too_large_to_store_do_not_wait_on_each_other() {
    use std::io::{Read, Write};
    use std::sync::{Arc, Condvar, Mutex};
    // (requests in flight now, the most at once), and whether to hold each
    // request until another is in flight (up to 10 s).
    let state = Arc::new((Mutex::new((0usize, 0usize, false)), Condvar::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let origin_state = state.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let state = origin_state.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let (lock, arrived) = &*state;
                let mut counts = lock.lock().unwrap();
                counts.0 += 1;
                counts.1 = counts.1.max(counts.0);
                arrived.notify_all();
                if counts.2 {
                    counts = arrived.wait_timeout_while(counts, Duration::from_secs(10), |c| c.0 < 2).unwrap().0;
                }
                drop(counts);
                let body = vec![b'x'; 1_572_864];
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncache-control: max-age=600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
                lock.lock().unwrap().0 -= 1;
            });
        }
    });
    let config = ProxyConfig::over(addr, ROUTE).with_main("\n[cache]\nmax_object_mb = 1\nlock_timeout_ms = 60000\n");
    let proxy = std::sync::Arc::new(Proxy::start(&config));
    // The first answer shows the object too large; the key is remembered.
    assert_eq!(proxy.get("/big", &[]).status, 200);
    state.0.lock().unwrap().2 = true;
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let proxy = proxy.clone();
            std::thread::spawn(move || proxy.get("/big", &[]))
        })
        .collect();
    for client in clients {
        let reply = client.join().unwrap();
        assert_eq!((reply.status, reply.body.len()), (200, 1_572_864));
    }
    assert_eq!(state.0.lock().unwrap().1, 2, "the second request waited for the first");
}
