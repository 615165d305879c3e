//! A misbehaving filter hurts only its own request: every hostile fixture
//! gets its route's fail-closed answer, requests to another route sent at the
//! same time all succeed, and no pool slot is left behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::*;

/// (route and behaviour, phase, expected status, words in the error)
const CASES: &[(&str, &str, u16, &str)] = &[
    ("panic", "on_request", 500, "trap"),
    ("loop", "on_request", 500, "timeout"),
    ("alloc", "on_request", 500, "memory-cap"),
    ("recurse", "on_request", 500, "trap"),
    ("giant-header", "on_request", 500, "trap"),
    ("giant-reply", "on_request", 500, "reply body of 2097152 bytes exceeds"),
    ("many-headers", "on_request", 200, ""),
    ("many-staged-headers", "on_request", 200, ""),
    ("large-staged-headers", "on_request", 200, ""),
    ("garbage-calls", "on_request", 200, ""),
    ("log-flood", "on_request", 200, ""),
    ("panic", "on_response", 500, "on-response"),
    ("giant-header", "on_response", 500, "on-response"),
];

fn routes() -> String {
    let mut routes = String::from("[[route]]\nname = \"ok\"\npath_prefix = \"/ok\"\nupstream = \"origin\"\n");
    for (behaviour, phase, _, _) in CASES {
        // A short deadline for the loop (with room for the config check at
        // start on a busy machine); the others get more, because debug
        // builds copy a 2 MiB reply slowly.
        let timeout_ms = if *behaviour == "loop" { 200 } else { 5_000 };
        routes.push_str(&format!(
            "\n[[route]]\nname = \"{phase}-{behaviour}\"\npath_prefix = \"/{phase}/{behaviour}\"\nupstream = \"origin\"\n\
             [[route.filters]]\nmodule = \"misbehave\"\ntimeout_ms = {timeout_ms}\nconfig = {{ {phase} = \"{behaviour}\" }}\n"
        ));
    }
    routes
}

#[test]
fn hostile_filters_hurt_only_their_own_requests() {
    let proxy = Arc::new(Proxy::start(&ProxyConfig::new(&routes(), &["misbehave"]).with_admin()));
    let done = Arc::new(AtomicBool::new(false));
    let bystanders: Vec<_> = (0..3)
        .map(|_| {
            let (proxy, done) = (proxy.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, Vec::new());
                while !done.load(Ordering::Relaxed) {
                    let reply = proxy.get("/ok/bystander", &[]);
                    if reply.status == 200 { ok += 1 } else { failed.push(reply) }
                }
                (ok, failed)
            })
        })
        .collect();

    for round in 0..3 {
        for (behaviour, phase, status, words) in CASES {
            if behaviour.ends_with("staged-headers") {
                // More headers than the test client takes: read them raw.
                let request = format!("GET /{phase}/{behaviour} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
                let (got, response) = send_raw_bytes(proxy.port, request.as_bytes());
                assert_eq!(got, Some(*status), "{response}");
                let head = response.split_once("\r\n\r\n").map_or(response.as_str(), |(head, _)| head);
                let fields = head.lines().skip(1).count();
                let staged = head.lines().filter(|line| line.starts_with("x-staged-")).count();
                if *behaviour == "many-staged-headers" {
                    // At most 256 are staged, and they fill the response up
                    // to its 256 headers, the origin's and Cache-Status and
                    // Via among them; x-request-id, Date and Connection come
                    // after.
                    assert!((200..256).contains(&staged), "{staged} staged headers of {fields}");
                    assert!(fields <= 256 + 3, "{fields} header fields");
                    // The ones past the count make one log line, not one each.
                    let id = head.lines().find_map(|line| line.strip_prefix("x-request-id: ")).unwrap();
                    let line =
                        proxy.wait_for_log_line(&[&format!("request {id}:"), "staged response header(s) dropped"]);
                    proxy.wait_for_access_log(id);
                    assert_eq!(proxy.log_lines(&format!("request {id}:")).len(), 1, "{line}");
                } else {
                    // 64 KiB of staged names and values: 63 of these 1 KiB headers.
                    assert_eq!(staged, 63, "{staged} staged headers of {fields}");
                }
                continue;
            }
            let reply = proxy.get(&format!("/{phase}/{behaviour}"), &[]);
            assert_eq!(reply.status, *status, "round {round}, {phase} {behaviour}: {reply:?}");
            if *status == 500 {
                let error = reply.json()["error"].as_str().unwrap().to_string();
                assert!(error.contains(words), "{phase} {behaviour}: {error}");
                assert_eq!(reply.json()["request_id"], reply.header("x-request-id").unwrap());
            }
            if *behaviour == "many-headers" {
                // Filters can leave at most 256; the proxy then adds
                // x-request-id, x-forwarded-for, x-forwarded-proto, cdn-loop
                // and via.
                let headers = reply.json()["headers"].as_object().unwrap().len();
                assert!((250..=261).contains(&headers), "the origin got {headers} headers");
            }
        }
    }

    done.store(true, Ordering::Relaxed);
    let mut total_ok = 0;
    for bystander in bystanders {
        let (ok, failed) = bystander.join().unwrap();
        assert!(failed.is_empty(), "bystander requests failed: {failed:?}");
        total_ok += ok;
    }
    assert!(total_ok > 0);

    // Every instance went back to the pool, and failures were counted.
    proxy.wait_for_metrics(&[
        "cascade_filter_instances_live 0",
        "cascade_filter_failures_total{module=\"misbehave\",kind=\"timeout\"} 3",
        "kind=\"memory-cap\"} 3",
        "kind=\"bad-return\"} 3",
    ]);
}

/// A filter that logs in a loop gets 100 lines per request into the proxy's
/// log, each cut at 4 KiB, and one line more saying the rest were dropped;
/// its request goes on. A reused instance gets a new allowance per request,
/// and errors have their own: a panic after the flood is still logged.
/// (A deadline with room: a debug build writes these lines slowly.)
#[test]
fn a_filter_cannot_flood_the_log() {
    let routes = "[[route]]\nname = \"flood\"\npath_prefix = \"/flood\"\nupstream = \"origin\"\n\
                  [[route.filters]]\nmodule = \"misbehave\"\nreuse_instances = true\ntimeout_ms = 5000\n\
                  config = { on_request = \"log-flood\", count_requests = true }\n\
                  [[route]]\nname = \"flood-panic\"\npath_prefix = \"/flood-panic\"\nupstream = \"origin\"\n\
                  [[route.filters]]\nmodule = \"misbehave\"\ntimeout_ms = 5000\n\
                  config = { on_request = \"log-flood\", on_response = \"panic\" }\n";
    let proxy = Proxy::start(&ProxyConfig::new(routes, &["misbehave"]));
    let failed = proxy.get("/flood-panic", &[]);
    assert_eq!(failed.status, 500, "{failed:?}");
    let tag = format!("request={}]", failed.header("x-request-id").unwrap());
    proxy.wait_for_log_line(&[&tag, "panicked at", "misbehave: asked to panic"]);
    proxy.wait_for_access_log(failed.header("x-request-id").unwrap());
    assert_eq!(proxy.log_lines(&tag).iter().filter(|line| line.contains("the rest are dropped")).count(), 1);

    for request in 1..=2 {
        let reply = proxy.get("/flood", &[]);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("x-instance-requests"), Some(request.to_string().as_str()), "one reused instance");
        let tag = format!("request={}]", reply.header("x-request-id").unwrap());
        proxy.wait_for_access_log(reply.header("x-request-id").unwrap());
        let lines = proxy.log_lines(&tag);
        assert_eq!(lines.len(), 101, "100 lines and the notice");
        let long = &lines[0];
        assert!(long.contains("yyyy") && long.ends_with("… (1044480 bytes more cut)"), "{:.200}", long);
        assert!(long.len() < 4096 + 200, "{} bytes", long.len());
        let floods: Vec<_> = lines.iter().filter(|line| line.contains("] flood ")).collect();
        assert_eq!(floods.len(), 99);
        assert!(floods[98].ends_with("] flood 99"), "{}", floods[98]);
    }
}

/// A filter that links `wasi:sockets` loads (language runtimes import it
/// whether they use it or not), but its sockets are refused when created:
/// a connection to a listener on loopback fails, and the listener sees
/// nothing.
#[test]
fn a_filter_cannot_open_a_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let routes = "[[route]]\nname = \"netcat\"\npath_prefix = \"/\"\nupstream = \"origin\"\n\
                  [[route.filters]]\nmodule = \"netcat\"\n";
    let proxy = Proxy::start(&ProxyConfig::new(routes, &["netcat"]));
    let reply = proxy.get("/", &[("x-connect", &target)]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.starts_with("refused:") && reply.body.contains("PermissionDenied"), "{}", reply.body);
    assert!(listener.accept().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock), "a connection arrived");
    // Without the header the filter lets the request through.
    assert_eq!(proxy.get("/", &[]).status, 200);
}
