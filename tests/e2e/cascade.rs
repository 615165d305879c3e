//! The upstream cascade: tiers with failover, health checks, consistent
//! hashing, upstream TLS, the CDN-Loop guard, and three real processes
//! (PoP Cascade → regional Cascade → origin).

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

const EDGE_ROUTE: &str = "[[route]]\nname = \"site\"\nupstream = \"edge\"\n";

/// A server that accepts connections and never answers.
fn black_hole() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    addr
}

fn tiered(first: SocketAddr, second: SocketAddr, first_extra: &str) -> ProxyConfig {
    let mut config = ProxyConfig::over(second, EDGE_ROUTE).with_node_id("pop").with_admin();
    config.main_extra.push_str(&format!(
        "\n[upstreams.first]\nservers = [\"{first}\"]\n{first_extra}\n[upstreams.edge]\ntiers = [\"first\", \"origin\"]\n"
    ));
    config
}

#[test]
fn connect_error_fails_over_to_the_next_tier() {
    let origin = EchoOrigin::start().unwrap();
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = Proxy::start(&tiered(dead, origin.addr(), "connect_timeout_ms = 500\n"));
    for method in ["GET", "POST"] {
        let reply = send(method, &proxy.url("/x"), &[]);
        assert_eq!(reply.status, 200, "nothing reached the first tier, so even {method} may go on: {reply:?}");
        assert_eq!(reply.header("x-origin-addr"), Some(origin.addr().to_string().as_str()));
    }
    proxy.wait_for_metrics(&[
        "cascade_upstream_attempts_total{tier=\"first\",outcome=\"failover\"} 2",
        "cascade_upstream_attempts_total{tier=\"origin\",outcome=\"sent\"} 2",
    ]);
}

#[test]
fn configured_5xx_fails_over_for_idempotent_requests_only() {
    let origin = EchoOrigin::start().unwrap();
    let proxy = Proxy::start(&tiered(always(503), origin.addr(), "failover_on = [503]\n"));
    let reply = proxy.get("/x", &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(origin.requests(), 1);
    // A POST may have had effects upstream: the 503 is passed through.
    let reply = send("POST", &proxy.url("/x"), &[]);
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(origin.requests(), 1);

    // A status not listed is an answer, not a failure.
    let origin = EchoOrigin::start().unwrap();
    let proxy = Proxy::start(&tiered(always(500), origin.addr(), "failover_on = [503]\n"));
    assert_eq!(proxy.get("/x", &[]).status, 500);
    assert_eq!(origin.requests(), 0);
}

/// A server that reads each whole request (its `Content-Length` body too),
/// then answers `status` with the body `nope` and closes.
fn always(status: u16) -> SocketAddr {
    raw_origin(move |stream| {
        let _ = write!(stream, "HTTP/1.1 {status} Nope\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope");
    })
}

/// A server that answers each request with the head of a chunked 200 and
/// one chunk, `hello`, then closes: a body cut short.
fn cut_short() -> SocketAddr {
    raw_origin(|stream| {
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n");
    })
}

/// A server that answers each request with `103 Early Hints`, then closes.
fn hints_then_gone() -> SocketAddr {
    raw_origin(|stream| {
        let _ = stream.write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n");
    })
}

/// An interim answer is no answer yet: an upstream that fails after a 103
/// still gets the client its error answer.
#[test]
fn an_upstream_failing_after_an_interim_answer_still_gets_an_error_answer() {
    let routes = "[[route]]\nname = \"site\"\nupstream = \"origin\"\n";
    let proxy = Proxy::start(&ProxyConfig::over(hints_then_gone(), routes));
    let (_, raw) = send_raw_bytes(proxy.port, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let finals: Vec<&str> =
        raw.lines().filter(|l| l.starts_with("HTTP/1.1 ") && !l.starts_with("HTTP/1.1 1")).collect();
    assert_eq!(finals, ["HTTP/1.1 502 Bad Gateway"], "{raw}");
}

/// A tier that sends Early Hints and then a failover status still fails
/// over: the client gets the next tier's answer after the hints.
#[test]
fn a_failover_status_after_an_interim_answer_still_fails_over() {
    let origin = EchoOrigin::start().unwrap();
    let hints_then_503 = raw_origin(|stream| {
        let _ = stream.write_all(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n");
        // Apart, so the hints go on to the client before the failure comes.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let _ = stream.write_all(b"HTTP/1.1 503 Busy\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy");
    });
    let proxy = Proxy::start(&tiered(hints_then_503, origin.addr(), "failover_on = [503]\n"));
    let (_, raw) = send_raw_bytes(proxy.port, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let statuses: Vec<&str> = raw.lines().filter_map(|l| l.strip_prefix("HTTP/1.1 ")?.get(..3)).collect();
    assert_eq!(statuses.last(), Some(&"200"), "{raw}");
    assert!(!statuses.contains(&"503") && !statuses.contains(&"502"), "{raw}");
    assert_eq!(origin.requests(), 1);
}

/// An upstream that fails in the middle of its body: the client gets what
/// came, then a closed connection with the message unfinished, never an
/// error answer glued to the origin's bytes and ended as if whole.
#[test]
fn a_body_cut_short_upstream_stays_cut_short() {
    let proxy = Proxy::start(
        &ProxyConfig::over(cut_short(), "[[route]]\nname = \"site\"\nupstream = \"origin\"\n").with_admin(),
    );
    let (status, raw) = send_raw_bytes(proxy.port, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, Some(200), "{raw}");
    assert!(raw.contains("hello"), "{raw}");
    assert!(!raw.contains("error"), "an error answer followed the origin's bytes: {raw}");
    assert!(!raw.ends_with("0\r\n\r\n"), "the cut message was ended as if whole: {raw}");
    proxy.wait_for_metrics(&["cascade_requests_total{route=\"site\",status=\"200\"} 1"]);
}

/// A listed 5xx fails over only if the request can be sent again: a body
/// past the retry buffer cannot, and the client gets the tier's own answer.
#[test]
fn a_request_that_cannot_be_retried_gets_the_tiers_own_answer() {
    let origin = EchoOrigin::start().unwrap();
    let proxy = Proxy::start(&tiered(always(503), origin.addr(), "failover_on = [503]\n"));
    let small = send_bytes("PUT", &proxy.url("/x"), &[], &[b'a'; 1024]);
    assert_eq!(small.status, 200, "a small body is retried on the next tier: {small:?}");
    assert_eq!(origin.requests(), 1);
    let large = send_bytes("PUT", &proxy.url("/x"), &[], &vec![b'a'; 256 << 10]);
    assert_eq!(large.status, 503, "{large:?}");
    assert_eq!(large.body, "nope", "the tier's answer, not an error of the proxy's: {large:?}");
    assert_eq!(origin.requests(), 1);
}

#[test]
fn read_timeout_fails_over() {
    let origin = EchoOrigin::start().unwrap();
    let proxy = Proxy::start(&tiered(black_hole(), origin.addr(), "read_timeout_ms = 300\n"));
    let reply = proxy.get("/slow", &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(origin.requests(), 1);
}

/// An upstream that never answers, with no tier left to try: a 504, as
/// nginx answers, not the 502 of an upstream that cannot be reached.
#[test]
fn a_read_timeout_with_no_tier_left_is_a_504() {
    let mut config = ProxyConfig::over(black_hole(), "[[route]]\nname = \"slow\"\nupstream = \"origin\"\n");
    config.main_extra.push_str("read_timeout_ms = 300\n");
    let proxy = Proxy::start(&config);
    let reply = proxy.get("/slow", &[]);
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.json()["error"], "upstream timed out", "{reply:?}");
    // The connection is closed after a failure, and the answer says so: the
    // client does not send its next request into a closed socket.
    assert_eq!(reply.header("connection"), Some("close"), "{reply:?}");
    // A POST times out the same way (it is not retried).
    assert_eq!(send("POST", &proxy.url("/slow"), &[]).status, 504);
}

/// An expired entry whose refresh meets a failover status on the first tier
/// goes on to the next tier, as a miss would: stale-if-error is for when no
/// tier is left to answer.
#[test]
fn stale_if_error_waits_for_the_last_tier() {
    let origin = EchoOrigin::start().unwrap();
    let proxy = Proxy::start(&tiered(always(503), origin.addr(), "failover_on = [503]\n"));
    let headers = [("x-echo-header", "cache-control: max-age=1, stale-if-error=600")];
    assert_eq!(proxy.get("/page", &headers).status, 200);
    assert_eq!(origin.requests(), 1);
    std::thread::sleep(Duration::from_millis(2_100));
    let reply = proxy.get("/page", &headers);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(origin.requests(), 2, "the stale copy was served without asking the next tier: {reply:?}");
}

#[test]
fn failover_budget_caps_the_attempts() {
    let origin = EchoOrigin::start().unwrap();
    let mut config = tiered(always(503), origin.addr(), "failover_on = [503]\n");
    config.main_extra = config
        .main_extra
        .replace("tiers = [\"first\", \"origin\"]", "tiers = [\"first\", \"origin\"]\nmax_attempts = 1");
    let proxy = Proxy::start(&config);
    assert_eq!(proxy.get("/x", &[]).status, 503, "one attempt allowed: no failover");
    assert_eq!(origin.requests(), 0);
}

#[test]
fn health_checks_take_a_down_server_out_of_rotation() {
    let origin = EchoOrigin::start().unwrap();
    let dead = free_port();
    let mut config = ProxyConfig::over(origin.addr(), "[[route]]\nname = \"site\"\nupstream = \"pair\"\n");
    config.main_extra.push_str(&format!(
        "\n[upstreams.pair]\nservers = [\"127.0.0.1:{dead}\", \"{}\"]\nconnect_timeout_ms = 300\nfail_timeout_ms = 0\n\
         [upstreams.pair.health_check]\npath = \"/healthz\"\ninterval_ms = 50\nunhealthy_threshold = 2\n",
        origin.addr()
    ));
    let proxy = Proxy::start(&config.with_admin());
    // A request sent to the dead server is retried on the live one (a
    // `retry`); once the checker has marked it down, none is sent there.
    let retries = || {
        let metrics = proxy.admin("GET", "/metrics", b"", None).body;
        let series = "cascade_upstream_attempts_total{tier=\"pair\",outcome=\"retry\"} ";
        metrics.lines().find_map(|l| l.strip_prefix(series)).map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let none_sent_to_the_dead_server = || {
        let before = retries();
        (0..20).all(|_| proxy.get("/", &[]).status == 200) && retries() == before
    };
    eventually("the dead server leaving the rotation", Duration::from_secs(20), none_sent_to_the_dead_server);
    proxy.wait_for_metrics(&[
        "cascade_upstream_servers{tier=\"pair\",state=\"up\"} 1",
        "cascade_upstream_servers{tier=\"pair\",state=\"down\"} 1",
    ]);

    // A reload keeps the verdict: the new checker (now probing once a
    // minute, so it could not find the server dead again in time) starts
    // from it rather than from "all up".
    let main = proxy.dir.path().join("cascade.toml");
    let text = std::fs::read_to_string(&main).unwrap();
    assert!(text.contains("interval_ms = 50"), "{text}");
    let text = text.replace("interval_ms = 50", "interval_ms = 60000");
    std::fs::write(&main, text).unwrap();
    assert_eq!(proxy.admin("POST", "/config/reload", b"", None).status, 200);
    assert!(none_sent_to_the_dead_server(), "a reload put the dead server back into rotation");
}

/// A server given by name follows its DNS answers while it serves, unlike
/// nginx's `proxy_pass` (resolved once, at start): when the name moves to
/// another address, requests go there, and while the nameserver fails, the
/// last addresses keep serving.
#[test]
fn a_server_name_follows_its_dns_answers() {
    // Two origins on one port of two loopback addresses: the name's answer
    // is all that tells them apart.
    let (first, second) = std::iter::repeat_with(|| {
        let second = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = second.local_addr().unwrap().port();
        Some((TcpListener::bind(("127.0.0.1", port)).ok()?, second))
    })
    .flatten()
    .next()
    .unwrap();
    let port = first.local_addr().unwrap().port();
    let (first, second) = (EchoOrigin::spawn(first).unwrap(), EchoOrigin::spawn(second).unwrap());
    let dns = DnsServer::start("origin.test", [127, 0, 0, 1].into());
    let mut config = ProxyConfig::over(first.addr(), "[[route]]\nname = \"site\"\nupstream = \"named\"\n");
    config.main_extra.push_str(&format!(
        "\n[upstreams.named]\nservers = [\"origin.test:{port}\"]\n\n[dns]\nnameservers = [\"{}\"]\nrefresh_secs = 1\n",
        dns.addr
    ));
    let proxy = Proxy::start(&config.with_admin());
    assert_eq!(proxy.get("/", &[]).status, 200);
    assert_eq!((first.requests(), second.requests()), (1, 0), "the name's address at start serves");

    // The name gains an address: requests go to both.
    let (one, two) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
    dns.answer(Some(&[one, two]));
    eventually("requests following the name to both its addresses", Duration::from_secs(30), || {
        proxy.get("/", &[]).status == 200 && second.requests() > 0
    });
    let (before_first, before_second) = (first.requests(), second.requests());
    assert!((0..4).all(|_| proxy.get("/", &[]).status == 200));
    assert_eq!(first.requests() - before_first, 2, "round robin left out the first address");
    assert_eq!(second.requests() - before_second, 2);
    proxy.wait_for_metrics(&["cascade_upstream_servers{tier=\"named\",state=\"up\"} 2"]);

    // It loses the first: none go there once the name is asked again.
    dns.answer(Some(&[two]));
    proxy.wait_for_log_line(&["upstream named: servers are now [127.0.0.2:"]);
    let served_by_first = first.requests();
    assert!((0..4).all(|_| proxy.get("/", &[]).status == 200));
    assert_eq!(first.requests(), served_by_first, "a request went to an address the name lost");
    proxy.wait_for_metrics(&["cascade_upstream_servers{tier=\"named\",state=\"up\"} 1"]);

    // The nameserver fails: the name keeps the address it had.
    dns.answer(None);
    proxy.wait_for_log_line(&["upstream named: keeping the addresses \"origin.test\" had", "SERVFAIL"]);
    assert!((0..4).all(|_| proxy.get("/", &[]).status == 200));
    assert_eq!(first.requests(), served_by_first, "a failed answer brought the old address back");
}

/// An answer that lives shorter than `dns.refresh_secs` (the test
/// nameserver's records have a TTL of 1 s) is asked again when it expires,
/// as nginx's resolver keeps answers for their TTL: a name that fails over
/// by DNS is followed at its own pace, not an hour later.
#[test]
fn a_names_answer_is_asked_again_when_its_ttl_runs_out() {
    let origin = EchoOrigin::start().unwrap();
    let port = origin.addr().port();
    let dns = DnsServer::start("origin.test", [127, 0, 0, 1].into());
    let mut config = ProxyConfig::over(origin.addr(), "[[route]]\nname = \"site\"\nupstream = \"named\"\n");
    config.main_extra.push_str(&format!(
        "\n[upstreams.named]\nservers = [\"origin.test:{port}\"]\n\n[dns]\nnameservers = [\"{}\"]\nrefresh_secs = 3600\n",
        dns.addr
    ));
    let proxy = Proxy::start(&config);
    assert_eq!(proxy.get("/", &[]).status, 200);
    dns.answer(Some(&[[127, 0, 0, 2].into()]));
    proxy.wait_for_log_line(&["upstream named: servers are now [127.0.0.2:"]);
    // And again: no first round at start can have seen this one.
    dns.answer(Some(&[[127, 0, 0, 1].into()]));
    proxy.wait_for_log_line(&["upstream named: servers are now [127.0.0.1:"]);
}

/// A reload while the nameserver is down: a name the serving config follows
/// keeps the addresses it had, so a change elsewhere (here, a route) is not
/// refused for it, as nginx refuses it (`host not found in upstream`). A
/// name no config resolved before is still refused, with its key, and the
/// config serving stays.
#[test]
fn a_reload_while_the_nameserver_is_down_keeps_a_names_addresses() {
    let origin = EchoOrigin::start().unwrap();
    let port = origin.addr().port();
    let dns = DnsServer::start("origin.test", [127, 0, 0, 1].into());
    let site = "[[route]]\nname = \"site\"\npath_prefix = \"/\"\nupstream = \"named\"\n";
    let mut config = ProxyConfig::over(origin.addr(), site).with_admin();
    config.main_extra.push_str(&format!(
        "\n[upstreams.named]\nservers = [\"origin.test:{port}\"]\n\n[dns]\nnameservers = [\"{}\"]\nrefresh_secs = 1\n",
        dns.addr
    ));
    let proxy = Proxy::start(&config);
    assert_eq!(proxy.get("/", &[]).status, 200);
    dns.answer(None);
    proxy.wait_for_log_line(&["upstream named: keeping the addresses \"origin.test\" had", "SERVFAIL"]);

    let routes = proxy.dir.path().join("routes/test.toml");
    let more = "[[route]]\nname = \"more\"\npath_prefix = \"/more\"\nupstream = \"named\"\n";
    std::fs::write(&routes, format!("{site}{more}")).unwrap();
    let reload = proxy.admin("POST", "/config/reload", b"", None);
    assert_eq!(reload.status, 200, "{}", reload.body);
    proxy.wait_for_log_line(&["upstreams.named.servers", "SERVFAIL", "keeping the addresses it had"]);
    let listed = proxy.admin("GET", "/routes", b"", None).body;
    assert!(listed.contains("\"more\""), "the reload's route is not serving: {listed}");
    let served = origin.requests();
    assert_eq!(proxy.get("/more/x", &[]).status, 200);
    assert_eq!(origin.requests(), served + 1, "the name's address did not serve");

    // A name no config has resolved: refused, and nothing changes.
    let main = proxy.dir.path().join("cascade.toml");
    let text = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, text.replace("origin.test:", "other.test:")).unwrap();
    let refused = proxy.admin("POST", "/config/reload", b"", None);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("upstreams.named.servers") && refused.body.contains("other.test"),
        "{}",
        refused.body
    );
    assert_eq!(proxy.get("/more/x", &[]).status, 200);
}

/// A connection refused by one server of a tier is retried on another of
/// the same tier (as nginx's `proxy_next_upstream error`), for any method,
/// without spending the failover budget; the server is then out of
/// rotation for `fail_timeout_ms`, so later requests do not try it first.
#[test]
fn a_refused_connection_is_retried_on_another_server_of_the_tier() {
    let origin = EchoOrigin::start().unwrap();
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let retried_after_six = |fail_timeout_ms: u64| {
        let mut config = ProxyConfig::over(origin.addr(), EDGE_ROUTE).with_admin();
        config.main_extra.push_str(&format!(
            "\n[upstreams.pair]\nservers = [\"{dead}\", \"{}\"]\nfail_timeout_ms = {fail_timeout_ms}\n\
             [upstreams.edge]\ntiers = [\"pair\"]\nmax_attempts = 1\n",
            origin.addr()
        ));
        let proxy = Proxy::start(&config);
        for i in 0..6 {
            let method = if i % 2 == 0 { "GET" } else { "POST" };
            let reply = send(method, &proxy.url("/x"), &[]);
            assert_eq!(reply.status, 200, "{method}: {reply:?}");
        }
        let metrics = proxy.admin("GET", "/metrics", b"", None).body;
        metric_value(&metrics, "cascade_upstream_attempts_total{tier=\"pair\",outcome=\"retry\"}")
    };
    // Out of rotation after its first failure (for ten minutes here).
    assert_eq!(retried_after_six(600_000), 1);
    // Never out of rotation: round-robin still sends only every other
    // request to it first.
    assert_eq!(retried_after_six(0), 3);
    assert_eq!(origin.requests(), 12);
}

#[test]
fn consistent_hashing_keeps_each_key_on_one_server() {
    let (a, b) = (EchoOrigin::start().unwrap(), EchoOrigin::start().unwrap());
    let mut config = ProxyConfig::over(a.addr(), "[[route]]\nname = \"site\"\nupstream = \"shards\"\n");
    config.main_extra.push_str(&format!(
        "\n[upstreams.shards]\nservers = [\"{}\", \"{}\"]\nbalance = \"consistent-hash\"\n",
        a.addr(),
        b.addr()
    ));
    let proxy = Proxy::start(&config);
    let mut used = std::collections::BTreeSet::new();
    for i in 0..20 {
        let path = format!("/k/{i}");
        let first = proxy.get(&path, &[]).header("x-origin-addr").unwrap().to_string();
        for _ in 0..3 {
            assert_eq!(proxy.get(&path, &[]).header("x-origin-addr").unwrap(), first, "{path} moved");
        }
        used.insert(first);
    }
    assert_eq!(used.len(), 2, "both shards get keys");
}

/// A regional tier serving TLS with the fixture chain (its certificate
/// names localhost) over an echo origin, for PoPs that reach it over TLS.
struct TlsRegional {
    origin: EchoOrigin,
    /// Where the regional tier serves TLS.
    addr: String,
    _regional: Proxy,
}

impl TlsRegional {
    fn start() -> Self {
        let origin = EchoOrigin::start().unwrap();
        let tls_port = free_port();
        let regional = Proxy::start(
            &ProxyConfig::over(origin.addr(), "[[route]]\nname = \"all\"\nupstream = \"origin\"\n")
                .with_tls(tls_port, &Self::fixtures()),
        );
        Self { origin, addr: format!("127.0.0.1:{tls_port}"), _regional: regional }
    }

    fn fixtures() -> std::path::PathBuf {
        root().join("tests/fixtures/tls/chain")
    }

    /// A PoP whose one route goes to upstream `secure`: `servers` over TLS,
    /// with `sni`, trusting the fixtures' CA; `more` is added to that
    /// upstream's table.
    fn pop(&self, servers: &[&str], sni: &str, more: &str) -> Proxy {
        let mut config = ProxyConfig::over(self.origin.addr(), "[[route]]\nname = \"all\"\nupstream = \"secure\"\n");
        config.main_extra.push_str(&format!(
            "\n[upstreams.secure]\nservers = {servers:?}\ntls = true\nsni = \"{sni}\"\nca_file = \"{}\"\n{more}",
            Self::fixtures().join("ca.pem").display()
        ));
        Proxy::start(&config)
    }
}

#[test]
fn upstream_tls_verifies_the_certificate() {
    let regional = TlsRegional::start();
    let good = regional.pop(&[&regional.addr], "localhost", "");
    let reply = good.get("/secure", &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["path"], "/secure");
    // A certificate that does not name the server is refused.
    let bad = regional.pop(&[&regional.addr], "example.com", "");
    assert_eq!(bad.get("/secure", &[]).status, 502);
}

/// A TLS tier is health-checked over TLS, verified as requests are: a
/// server that accepts connections but speaks no TLS, or whose certificate
/// does not name the tier's SNI, is marked down (a TCP connect would pass
/// both); one that completes a verified handshake and answers stays up.
#[test]
fn a_tls_tier_is_health_checked_over_verified_tls() {
    let regional = TlsRegional::start();
    let (tls_server, plain_server) = (regional.addr.clone(), regional.origin.addr().to_string());
    // A long timeout: one slow probe on a busy machine must not fail the
    // good server.
    let checked = "[upstreams.secure.health_check]\npath = \"/healthz\"\ninterval_ms = 50\ntimeout_ms = 10000\n\
                   unhealthy_threshold = 1\n";
    let pop = |sni: &str| regional.pop(&[&tls_server, &plain_server], sni, checked);
    let marked_down = |proxy: &Proxy, server: &str| !proxy.log_lines(&format!("server {server} is down")).is_empty();

    let pop_named_right = pop("localhost");
    // Its probe waits out the timeout: the server reads on, for a request.
    eventually("the server without TLS marked down", Duration::from_secs(60), || {
        marked_down(&pop_named_right, &plain_server)
    });
    // Each round probes the TLS server first: it has passed by now.
    assert!(!marked_down(&pop_named_right, &tls_server), "a server with a verified certificate was marked down");
    for _ in 0..10 {
        assert_eq!(pop_named_right.get("/x", &[]).status, 200);
    }
    let pop_named_wrong = pop("example.com");
    eventually("a certificate that does not name the SNI failing its checks", Duration::from_secs(60), || {
        marked_down(&pop_named_wrong, &tls_server)
    });
}

#[test]
fn cdn_loop_and_via_are_added_and_a_loop_is_refused() {
    let origin = EchoOrigin::start().unwrap();
    let proxy = Proxy::start(
        &ProxyConfig::over(origin.addr(), "[[route]]\nname = \"site\"\nupstream = \"origin\"\n").with_node_id("pop"),
    );
    let reply = proxy.get("/", &[("cdn-loop", "other-cdn")]);
    let seen = &reply.json()["headers"];
    assert_eq!(seen["cdn-loop"], "other-cdn, pop");
    assert_eq!(seen["via"], "1.1 pop");
    assert_eq!(reply.header("via"), Some("1.1 pop"));

    let looped = proxy.get("/", &[("cdn-loop", "other-cdn, pop; v=1")]);
    assert_eq!(looped.status, 508, "{looped:?}");
    assert!(looped.json()["error"].as_str().unwrap().contains("loop detected"), "{looped:?}");
    assert_eq!(origin.requests(), 1);

    // A proxy configured as its own upstream stops at the second pass.
    let port = free_port();
    let mut config = ProxyConfig::over(origin.addr(), "[[route]]\nname = \"site\"\nupstream = \"itself\"\n");
    config.main_extra.push_str(&format!("\n[upstreams.itself]\nservers = [\"127.0.0.1:{port}\"]\n"));
    let itself = Proxy::start_on(&config, port);
    let reply = itself.get("/", &[]);
    assert_eq!(reply.status, 508, "{reply:?}");
    // A line with a byte past ASCII, which the node's member joins, hides
    // no loop (it did until the headers outgrew their limit, passes later).
    let request = b"GET / HTTP/1.1\r\nhost: example.com\r\ncdn-loop: caf\xc3\xa9\r\nconnection: close\r\n\r\n";
    let (status, answer) = send_raw_bytes(port, request);
    assert_eq!(status, Some(508), "{answer}");
    assert!(answer.contains("loop detected"), "{answer}");
}

/// `cascade demo-origin` as its own process, killed on drop.
struct OriginProcess(Child, SocketAddr);

impl OriginProcess {
    fn start() -> Self {
        let port = free_port();
        let child = Command::new(cascade_bin())
            .args(["demo-origin", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port);
        Self(child, format!("127.0.0.1:{port}").parse().unwrap())
    }
}

impl Drop for OriginProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn three_processes_pop_regional_origin() {
    let origin = OriginProcess::start();
    let regional = Proxy::start(
        &ProxyConfig::over(origin.1, "[[route]]\nname = \"all\"\nupstream = \"origin\"\n").with_node_id("regional"),
    );
    let mut pop_config = ProxyConfig::over(origin.1, EDGE_ROUTE).with_node_id("pop").with_admin();
    pop_config.main_extra.push_str(&format!(
        "\n[upstreams.regional]\nservers = [\"127.0.0.1:{}\"]\nconnect_timeout_ms = 500\n\
         [upstreams.edge]\ntiers = [\"regional\", \"origin\"]\n",
        regional.port
    ));
    let pop = Proxy::start(&pop_config);
    let long = [("x-echo-header", "cache-control: max-age=600")];
    let short = [("x-echo-header", "cache-control: max-age=1, stale-if-error=600")];

    // A miss at both caches: the origin answers, both store.
    let first = pop.get("/doc", &long);
    assert_eq!(first.status, 200);
    assert_eq!(first.header("cache-status"), Some("regional; fwd=miss; stored, pop; fwd=miss; stored"));
    assert_eq!(first.json()["headers"]["cdn-loop"], "pop, regional", "{first:?}");

    // Purged at the PoP, the next request is a regional hit: the origin is
    // not reached (its request count in the body does not move).
    let purge =
        pop.admin("POST", "/cache/purge", format!("{{\"url\": \"127.0.0.1:{}/doc\"}}", pop.port).as_bytes(), None);
    assert_eq!(purge.json()["purged"], 1, "{purge:?}");
    let second = pop.get("/doc", &long);
    let status = second.header("cache-status").unwrap();
    assert!(status.starts_with("regional; hit"), "{status}");
    assert!(status.ends_with("pop; fwd=miss; stored"), "{status}");
    assert_eq!(origin_count(&second), origin_count(&first));
    let probe = pop.get("/probe", &[]);
    assert_eq!(origin_count(&probe), origin_count(&first) + 1, "exactly one origin request so far besides this probe");

    // Cache a short-lived document, then kill the regional tier: the PoP
    // fails over to the origin.
    let stale_source = pop.get("/short", &short);
    assert_eq!(stale_source.status, 200);
    drop(regional);
    let failed_over = pop.get("/after-regional", &[]);
    assert_eq!(failed_over.status, 200, "{failed_over:?}");
    assert_eq!(failed_over.header("cache-status").map(|s| s.starts_with("pop;")), Some(true), "{failed_over:?}");
    pop.wait_for_metrics(&["cascade_upstream_attempts_total{tier=\"regional\",outcome=\"failover\"} 1"]);

    // With the origin down too, the stale copy is served, and says so.
    drop(origin);
    std::thread::sleep(Duration::from_millis(1_500));
    let stale = pop.get("/short", &short);
    assert_eq!(stale.status, 200, "{stale:?}");
    assert_eq!(origin_count(&stale), origin_count(&stale_source));
    let status = stale.header("cache-status").unwrap();
    assert!(status.contains("pop; hit; ttl=-") && status.contains("stale"), "{status}");
    // Nothing cached, nothing to serve: a clear 502.
    assert_eq!(pop.get("/never-cached", &[]).status, 502);
    pop.wait_for_metrics(&["cascade_cache_requests_total{route=\"site\",result=\"stale\"} 1"]);
}

// A failure of our own (a response filter failing closed) is not the
// upstream's: the request does not go on to the next tier without it.
#[test]
fn a_failing_response_filter_does_not_fail_over() {
    let (first, second) = (EchoOrigin::start().unwrap(), EchoOrigin::start().unwrap());
    let mut config = tiered(first.addr(), second.addr(), "");
    config.routes = "[[route]]\nname = \"site\"\nupstream = \"edge\"\n[[route.filters]]\nmodule = \"misbehave\"\n\
                     config = { on_response = \"panic\" }\n"
        .into();
    let config = config.with_built_module("misbehave");
    let proxy = Proxy::start(&config);
    let reply = proxy.get("/x", &[("x-echo-header", "cache-control: max-age=60")]);
    assert_eq!(reply.status, 500, "{reply:?}");
    assert!(reply.json()["error"].as_str().unwrap().contains("on-response"), "{reply:?}");
    assert_eq!((first.requests(), second.requests()), (1, 0));
    // The proxy keeps serving, and a second request fails the same way.
    assert_eq!(proxy.get("/x", &[]).status, 500);
}

/// docker/conf's `file` as compose runs it, written to `dir/cascade.toml`
/// (its route files beside it): the compose network's names, the image's
/// paths and the ports replaced as `replacements` say, each of which must
/// be in the file.
fn docker_config(file: &str, replacements: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let conf = root().join("docker/conf");
    let mut text = std::fs::read_to_string(conf.join(file)).unwrap();
    for (from, to) in replacements {
        assert!(text.contains(from), "docker/conf/{file} no longer has {from:?}");
        text = text.replace(from, to);
    }
    std::fs::write(dir.path().join("cascade.toml"), text).unwrap();
    std::fs::create_dir(dir.path().join("routes")).unwrap();
    for route_file in std::fs::read_dir(conf.join("routes")).unwrap() {
        let route_file = route_file.unwrap().path();
        std::fs::copy(&route_file, dir.path().join("routes").join(route_file.file_name().unwrap())).unwrap();
    }
    dir
}

/// The configs of docker/compose.yaml serve its topology: a PoP in front
/// of a regional tier in front of the origin, failing over to the origin,
/// with the PoP's revocation store kept in its state directory.
#[test]
fn the_docker_configs_serve_a_pop_a_regional_tier_and_an_origin() {
    let origin = OriginProcess::start();
    let filters = root().join("target/wasm32-wasip2/release").display().to_string();
    let state = tempfile::tempdir().unwrap();
    let (regional_port, pop_port) = (free_port(), free_port());
    let shared = |port: u16, admin_port: u16, state: &str| {
        vec![
            ("0.0.0.0:8080", format!("127.0.0.1:{port}")),
            ("127.0.0.1:9901", format!("127.0.0.1:{admin_port}")),
            ("\"CASCADE_ADMIN_TOKEN\"", "\"CASCADE_TEST_ADMIN_TOKEN\"".to_string()),
            ("origin:9000", origin.1.to_string()),
            ("/usr/lib/cascade/filters", filters.clone()),
            ("/var/lib/cascade", state.to_string()),
        ]
    };
    let regional_admin = free_port();
    let regional_state = state.path().join("regional").display().to_string();
    let regional_dir = docker_config("regional.toml", &shared(regional_port, regional_admin, &regional_state));
    let regional = Proxy::start_in(regional_dir, regional_port, regional_admin);
    let pop_admin = free_port();
    let pop_state = state.path().join("pop").display().to_string();
    let mut pop_replacements = shared(pop_port, pop_admin, &pop_state);
    pop_replacements.push(("regional:8080", format!("127.0.0.1:{regional_port}")));
    let pop = Proxy::start_in(docker_config("pop.toml", &pop_replacements), pop_port, pop_admin);

    let cacheable = [("x-echo-header", "cache-control: max-age=600")];
    let first = pop.get("/hello", &cacheable);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.header("cache-status"), Some("regional; fwd=miss; stored, pop; fwd=miss; stored"));
    assert_eq!(first.json()["headers"]["cdn-loop"], "pop, regional", "{first:?}");
    let second = pop.get("/hello", &cacheable);
    assert!(second.header("cache-status").unwrap().contains("pop; hit"), "{second:?}");
    assert_eq!(origin_count(&second), origin_count(&first), "served by the PoP's cache");

    let revoked = pop.admin("PUT", "/kv/revoked/jti:leaked", b"", None);
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let saved = std::fs::read_to_string(state.path().join("pop/kv/revoked.json")).unwrap();
    assert!(saved.contains("jti:leaked"), "{saved}");

    drop(regional);
    let failed_over = pop.get("/after-regional", &[]);
    assert_eq!(failed_over.status, 200, "{failed_over:?}");
    assert_eq!(failed_over.json()["headers"]["cdn-loop"], "pop", "straight to the origin: {failed_over:?}");
}
