//! Hostile HTTP input: each request gets a clear 4xx (or the connection is
//! refused before anything reaches the upstream), and the proxy keeps serving.
//! Raw bytes, because a well-behaved client would never send these.

use crate::support::*;

const ROUTES: &str = "[[route]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"origin\"\n\
                      [[route.filters]]\nmodule = \"rewrite\"\nconfig = { strip_prefix = \"/api\", add_prefix = \"/v2\", request_headers = { set = { x-route = \"api\" } } }\n\n\
                      [[route]]\nname = \"rest\"\npath_prefix = \"/\"\nupstream = \"origin\"\n";

/// An echo origin, and a proxy in front of it with [`ROUTES`].
fn proxy() -> (EchoOrigin, Proxy) {
    let origin = EchoOrigin::start().unwrap();
    let proxy = Proxy::start(&ProxyConfig::over(origin.addr(), ROUTES).with_built_module("rewrite"));
    (origin, proxy)
}

#[test]
fn hostile_requests_get_a_4xx_and_the_proxy_keeps_serving() {
    let (origin, proxy) = proxy();
    let long = "a".repeat(128 * 1024);
    let many_headers: String = (0..2_000).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("oversized header", format!("GET / HTTP/1.1\r\nHost: x\r\nx-big: {long}\r\n\r\n").into_bytes()),
        ("oversized URI", format!("GET /{long} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()),
        ("too many headers", format!("GET / HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes()),
        (
            "invalid chunk size",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nbody".to_vec(),
        ),
        ("unknown Transfer-Encoding", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, zork\r\n\r\n".to_vec()),
        ("no Host in HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("two Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec()),
        ("a Host with a space", b"GET / HTTP/1.1\r\nHost: exa mple.com\r\n\r\n".to_vec()),
        ("a Host with a slash", b"GET / HTTP/1.1\r\nHost: a.com/evil\r\n\r\n".to_vec()),
        ("a path climbing above the root", b"GET /../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("an encoded slash", b"GET /api%2Fusers HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("an encoded backslash", b"GET /static%5C..%5Capi HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("an encoded NUL", b"GET /api%00/users HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("a malformed escape", b"GET /a%zz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("a request line that is not HTTP", b"HELLO\r\n\r\n".to_vec()),
        // Targets that are neither a path nor an http(s) URL: Pingora would
        // route them as `/` and send their bytes to the origin.
        ("an opaque target", b"GET x:/api/users HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("a relative target", b"GET api/users HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("a target of another scheme", b"GET ftp://x/api/users HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
    ];
    for (what, request) in &cases {
        // Asking to close spares waiting on a well-framed refusal's keep-alive.
        let request = String::from_utf8_lossy(request).replacen("Host: x\r\n", "Host: x\r\nConnection: close\r\n", 1);
        let (status, text) = send_raw_bytes(proxy.port, request.as_bytes());
        match status {
            Some(code) => assert!((400..500).contains(&code), "{what}: got {code}: {}", &text[..text.len().min(300)]),
            // Refusing the connection outright is also a refusal; what
            // matters is that nothing reached the origin.
            None => assert!(text.is_empty(), "{what}: not HTTP: {text:?}"),
        }
        let ok = proxy.get("/api/ok", &[]);
        assert_eq!(ok.status, 200, "after {what}, the proxy still serves");
        assert_eq!(ok.json()["path"], "/v2/ok");
    }
    // Every request that reached the origin was one of the checks above.
    assert_eq!(origin.requests(), cases.len() as u64, "a hostile request reached the origin");
}

#[test]
fn no_path_trick_reaches_another_route_without_its_filters() {
    let (_origin, proxy) = proxy();
    let get =
        |path: &str| send_raw(proxy.port, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    // Each of these means /api/users; each must go through the api route's
    // rewrite (the origin sees /v2/users). The first ones are normalized and
    // served; the others may also be refused.
    let normalized = ["/api/users", "/static/../api/users", "/%61pi/users", "//api//users", "/api/./users"];
    let served_or_refused = ["/%2e%2e/api/users", "/x/%2E%2E/api/users", "/API/../api/users"];
    for path in normalized.iter().chain(&served_or_refused) {
        let (status, body) = get(path);
        match status {
            200 => {
                let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(echoed["path"], "/v2/users", "{path} skipped the api route's filters");
            }
            400 if served_or_refused.contains(path) => {}
            other => panic!("{path}: {other} {body}"),
        }
    }
    let (status, body) = get("/../etc/passwd");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("above the root"), "{body}");
    // Tomcat and Spring drop `;` parameters, then resolve the dot segment:
    // to them this is /api/users, which must not skip the api route.
    let (status, body) = get("/static/..;/api/users");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("';' parameters"), "{body}");
    // And they read /api;jsessionid=1/users as /api/users: that is the api
    // route's, whose filters would not know the path, so it is refused.
    // Parameters past the prefix reach the origin through the route.
    for path in ["/api;jsessionid=1/users", "/;x/api/users", "/api;/users"] {
        let (status, body) = get(path);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("parameters inside the route prefix"), "{path}: {body}");
    }
    let (status, body) = get("/api/users;jsessionid=1");
    assert_eq!(status, 200, "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-route"], "api", "{body}");
    assert_eq!(echoed["path"], "/v2/users;jsessionid=1", "{body}");
}

/// A prefix ending in `/` covers the path without it: `/admin` is the
/// `/admin/` route's (origins serve both alike), not the `/` route's, which
/// lacks its filters; so is `/admin;x`, which is refused as any `;` inside a
/// prefix is.
#[test]
fn a_prefix_with_a_slash_covers_the_bare_path() {
    let origin = EchoOrigin::start().unwrap();
    let routes = "[[route]]\nname = \"admin\"\npath_prefix = \"/admin/\"\nupstream = \"origin\"\n\
                  [[route.filters]]\nmodule = \"rewrite\"\nconfig = { request_headers = { set = { x-route = \"admin\" } } }\n\n\
                  [[route]]\nname = \"rest\"\npath_prefix = \"/\"\nupstream = \"origin\"\n";
    let proxy = Proxy::start(&ProxyConfig::over(origin.addr(), routes).with_built_module("rewrite"));
    for path in ["/admin", "/admin/", "/admin/users"] {
        let reply = proxy.get(path, &[]);
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert_eq!(reply.json()["headers"]["x-route"], "admin", "{path} skipped the admin route's filters");
    }
    assert_eq!(proxy.get("/administrator", &[]).json()["headers"]["x-route"], serde_json::Value::Null);
    let (status, body) = send_raw(proxy.port, "GET /admin;x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 400, "{body}");
}

/// A filter's new path is normalized as the client's was: a rewrite that
/// makes a dot segment (`/assets/...gz` to `/public/..`) sends the origin
/// the path it would resolve (`/`), which later filters check too.
#[test]
fn a_path_a_filter_sets_is_normalized() {
    let origin = EchoOrigin::start().unwrap();
    let routes = "[[route]]\nname = \"assets\"\npath_prefix = \"/assets\"\nupstream = \"origin\"\n\
                  [[route.filters]]\nmodule = \"rewrite\"\n\
                  config = { path_rewrites = [{ pattern = '^/assets/(.*)\\.gz$', replacement = '/public//$1' }] }\n";
    let proxy = Proxy::start(&ProxyConfig::over(origin.addr(), routes).with_built_module("rewrite"));
    for (path, seen) in [("/assets/...gz", "/"), ("/assets/a/b.gz", "/public/a/b"), ("/assets/..gz", "/public/")] {
        let reply = proxy.get(path, &[]);
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert_eq!(reply.json()["path"], seen, "{path}");
    }
}

/// An absolute-form target names the host (RFC 9112 §3.2.2): routing reads
/// it there when the client sent no `Host` (HTTP/1.0), and the origin gets
/// a path and that `Host`.
#[test]
fn an_absolute_form_target_is_routed_by_its_authority() {
    let origin = EchoOrigin::start().unwrap();
    let routes = "[[route]]\nname = \"admin\"\nhost = \"admin.example\"\npath_prefix = \"/\"\nupstream = \"origin\"\n\
                  [[route.filters]]\nmodule = \"rewrite\"\nconfig = { add_prefix = \"/guarded\" }\n\n\
                  [[route]]\nname = \"rest\"\npath_prefix = \"/\"\nupstream = \"origin\"\n";
    let proxy = Proxy::start(&ProxyConfig::over(origin.addr(), routes).with_built_module("rewrite"));
    for request in [
        "GET http://admin.example/internal HTTP/1.0\r\n\r\n",
        "GET http://admin.example/internal HTTP/1.1\r\nHost: admin.example\r\nConnection: close\r\n\r\n",
        "GET HTTP://admin.example/internal HTTP/1.0\r\n\r\n",
    ] {
        let (status, body) = send_raw(proxy.port, request);
        assert_eq!(status, 200, "{request:?}: {body}");
        let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echoed["path"], "/guarded/internal", "{request:?} skipped the admin route: {body}");
        assert_eq!(echoed["headers"]["host"], "admin.example", "{request:?}: {body}");
    }
    let (status, body) = send_raw(proxy.port, "GET http://bad host/x HTTP/1.0\r\n\r\n");
    assert!((400..500).contains(&status), "{body}");
}

// RFC 9112 §6.1: with both Content-Length and Transfer-Encoding, Transfer-Encoding
// wins and the connection must close after the response. Pingora does exactly
// that (it drops Content-Length and keep-alive), so the bytes a front end would
// have framed differently can never become a second request.
#[test]
fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    let origin = EchoOrigin::start().unwrap();
    let proxy = Proxy::start(&ProxyConfig::over(origin.addr(), ROUTES.split("\n\n").nth(1).unwrap()));
    let request = b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
                    0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let (status, text) = send_raw_bytes(proxy.port, request);
    assert_eq!(status, Some(200), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "one response, then the connection closed: {text}");
    assert!(text.contains("\"path\":\"/first\"") && text.contains("\"body_bytes\":0"), "{text}");
    assert!(!text.contains("smuggled"));
    assert_eq!(origin.requests(), 1, "the smuggled request never reached the origin");
}

/// A chunked body has no Content-Length to refuse up front: it is counted as
/// it streams, and the request ends with a 413 once it passes `max_body_mb`.
#[test]
fn a_streamed_body_over_the_limit_gets_413() {
    use std::io::{Read, Write};
    let origin = EchoOrigin::start().unwrap();
    let mut config = ProxyConfig::over(origin.addr(), ROUTES).with_built_module("rewrite");
    config.server_extra.push_str("max_body_mb = 1\n");
    let proxy = Proxy::start(&config);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut reader = stream.try_clone().unwrap();
    // Read while writing: the answer comes before the body is all sent.
    let answer = std::thread::spawn(move || {
        let mut head = [0u8; 12];
        reader.read_exact(&mut head).map(|_| String::from_utf8_lossy(&head).into_owned())
    });
    let _ = stream.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = [b'a'; 64 * 1024];
    for _ in 0..32 {
        // 2 MiB in all; the proxy may stop reading once it has answered.
        if stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err()
            || stream.write_all(&chunk).is_err()
            || stream.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let head = answer.join().unwrap().expect("an answer");
    assert_eq!(head, "HTTP/1.1 413", "{head}");
    // The proxy keeps serving.
    assert_eq!(proxy.get("/other", &[]).status, 200);
}

/// An origin's hop-by-hop fields, and those its `Connection` names, stop at
/// the proxy (RFC 9110 §7.6.1): an HTTP/1.1 client sees none of them, on
/// the miss or on a hit from the cache. The framing stays whatever
/// `Connection` names.
#[test]
fn an_origins_hop_by_hop_fields_reach_no_client() {
    let origin = raw_origin(|stream| {
        let _ = std::io::Write::write_all(
            stream,
            b"HTTP/1.1 200 OK\r\nconnection: close, x-backend, content-length\r\nx-backend: 10.0.0.5\r\n\
              keep-alive: timeout=2\r\nupgrade: h2,h2c\r\nproxy-connection: keep-alive\r\n\
              x-kept: yes\r\ncache-control: max-age=60\r\ncontent-length: 2\r\n\r\nok",
        );
    });
    let routes = "[[route]]\nname = \"site\"\nupstream = \"origin\"\n[route.cache]\nttl_secs = 60\n";
    let proxy = Proxy::start(&ProxyConfig::over(origin, routes));
    for pass in ["miss", "hit"] {
        let reply = proxy.get("/page", &[]);
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok"), "{pass}: {reply:?}");
        for name in ["x-backend", "keep-alive", "upgrade", "proxy-connection"] {
            assert_eq!(reply.header(name), None, "{pass}: {name} reached the client: {reply:?}");
        }
        assert_eq!(reply.header("x-kept"), Some("yes"), "{pass}");
        assert_eq!(reply.header("content-length"), Some("2"), "{pass}");
        let cache_status = reply.header("cache-status").unwrap_or_default();
        assert_eq!(cache_status.contains("hit"), pass == "hit", "{pass}: {reply:?}");
    }
    // A 426 must say what to upgrade to (RFC 9110 §15.5.22): its Upgrade stays.
    let upgrade_required = raw_origin(|stream| {
        let _ = std::io::Write::write_all(
            stream,
            b"HTTP/1.1 426 Upgrade Required\r\nupgrade: websocket\r\nconnection: upgrade\r\ncontent-length: 0\r\n\r\n",
        );
    });
    let proxy = Proxy::start(&ProxyConfig::over(upgrade_required, "[[route]]\nname = \"ws\"\nupstream = \"origin\"\n"));
    let reply = proxy.get("/chat", &[]);
    assert_eq!((reply.status, reply.header("upgrade")), (426, Some("websocket")), "{reply:?}");
}

/// A request body that stalls past `server.body_timeout_secs` gets 408, as
/// nginx's `client_body_timeout` answers, not a 400 that blames the request.
#[test]
fn a_stalled_body_gets_408() {
    let origin = EchoOrigin::start().unwrap();
    let mut config = ProxyConfig::over(origin.addr(), "[[route]]\nname = \"site\"\nupstream = \"origin\"\n");
    config.server_extra.push_str("body_timeout_secs = 1\n");
    let proxy = Proxy::start(&config);
    let (status, answer) = send_raw(proxy.port, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
    assert_eq!(status, 408, "{answer}");
    assert!(answer.contains("the request body stalled"), "{answer}");
    assert_eq!(proxy.get("/", &[]).status, 200, "the proxy keeps serving");
}
