//! Active health checks: a thread per checked group probes each server with
//! `GET <path>` and marks it down after `unhealthy_threshold` failures in a
//! row, up again after `healthy_threshold` passes. A 2xx or 3xx passes. A TLS
//! tier is probed over TLS, verified as Pingora's connector verifies the
//! proxy's own connections: a server that accepts connections but cannot
//! complete a handshake the proxy would trust serves no request, so it fails
//! its checks. Each probe has `timeout` in all, however slowly a server
//! trickles its answer.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use pingora::tls::{CertificateDer, ClientConfig, RootCertStore, ServerName};

use super::UpstreamGroup;
use crate::config::{HealthCheckConfig, UpstreamTls};

pub fn spawn_checker(group: Weak<UpstreamGroup>, check: HealthCheckConfig) {
    let spawned = std::thread::Builder::new().name("cascade-health".into()).spawn(move || {
        let Some(how) = group.upgrade().map(|group| Probe::for_group(&group)) else { return };
        // Consecutive results per server: positive passes, negative failures.
        let mut streaks: HashMap<SocketAddr, i64> = HashMap::new();
        loop {
            let Some(group) = group.upgrade().filter(|g| !g.is_retired()) else { return };
            // The servers now (a name's addresses may have changed), held
            // as an `Arc`: the probes take a while.
            let servers = arc_swap::Guard::into_inner(group.servers());
            streaks.retain(|addr, _| servers.iter().any(|s| s.addr == *addr));
            for server in servers.iter() {
                let streak = streaks.entry(server.addr).or_default();
                let passed = probe(server.addr, &check, &how);
                if group.is_retired() {
                    return;
                }
                *streak = match (passed, *streak) {
                    (true, s) if s > 0 => s + 1,
                    (true, _) => 1,
                    (false, s) if s < 0 => s - 1,
                    (false, _) => -1,
                };
                let healthy = server.is_healthy();
                if healthy && -*streak >= i64::from(check.unhealthy_threshold) {
                    log::warn!(
                        "upstream {} server {} is down: {} failed health checks",
                        group.name(),
                        server.addr,
                        -*streak
                    );
                    server.healthy.store(false, Ordering::Relaxed);
                } else if !healthy && *streak >= i64::from(check.healthy_threshold) {
                    log::info!("upstream {} server {} is up again", group.name(), server.addr);
                    server.healthy.store(true, Ordering::Relaxed);
                }
            }
            drop((servers, group));
            std::thread::sleep(check.interval);
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot start a health checker: {e}");
    }
}

/// How a group's servers are probed.
enum Probe {
    Http,
    Tls(TlsProbe),
    /// A TCP connect only: a TLS tier with `sni = ""`, whose certificate
    /// Pingora does not check either (as nginx does not), or one whose TLS
    /// settings the probe cannot take.
    Connect,
}

impl Probe {
    fn for_group(group: &UpstreamGroup) -> Self {
        match &group.config.tls {
            None => Self::Http,
            Some(tls) if tls.sni.is_empty() => Self::Connect,
            Some(tls) => TlsProbe::new(tls).map_or_else(
                |e| {
                    log::error!("upstream {}: health checks only connect: {e}", group.name());
                    Self::Connect
                },
                Self::Tls,
            ),
        }
    }
}

/// The settings Pingora's rustls connector uses on the request path: the
/// tier's CA instead of the system's roots, TLS 1.2 and 1.3, ALPN
/// `http/1.1`, and the SNI name checked against the certificate.
struct TlsProbe {
    config: Arc<ClientConfig>,
    /// The name the certificate is checked against.
    sni: ServerName<'static>,
    /// The probe's `Host` unless the check names one: the `sni` as
    /// configured (a name-routed origin behind TLS is named by it).
    host: String,
}

impl TlsProbe {
    fn new(tls: &UpstreamTls) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        match &tls.ca_der {
            Some(der) => roots.add(CertificateDer::from(der.clone())).map_err(|e| format!("its ca_file: {e}"))?,
            None => pingora::tls::load_platform_certs_incl_env_into_store(&mut roots)
                .map_err(|e| format!("the system's CA certificates: {e}"))?,
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // A resumed session is not verified again: every probe must check
        // the certificate the server has now.
        config.resumption = rustls::client::Resumption::disabled();
        let name = leftmost_underscores_as_hyphens(&tls.sni).unwrap_or_else(|| tls.sni.clone());
        let sni = ServerName::try_from(name).map_err(|e| format!("sni {:?}: {e}", tls.sni))?;
        Ok(Self { config: Arc::new(config), sni, host: tls.sni.clone() })
    }
}

/// Pingora checks a name whose leftmost label (of a subdomain) has
/// underscores as if they were hyphens (`replace_leftmost_underscore` in its
/// TLS connectors, not public): no certificate can name a label with an
/// underscore.
fn leftmost_underscores_as_hyphens(sni: &str) -> Option<String> {
    let (leftmost, rest) = sni.split_once('.')?;
    (rest.contains('.') && leftmost.contains('_')).then(|| format!("{}.{rest}", leftmost.replace('_', "-")))
}

/// One probe of `addr`: `true` if it answers the check's `GET` with a 2xx or
/// 3xx within `check.timeout`.
fn probe(addr: SocketAddr, check: &HealthCheckConfig, how: &Probe) -> bool {
    let deadline = Instant::now() + check.timeout;
    let Ok(tcp) = TcpStream::connect_timeout(&addr, check.timeout) else {
        return false;
    };
    let mut tcp = Deadline { stream: tcp, deadline };
    let host = check.host.clone();
    match how {
        Probe::Connect => true,
        Probe::Http => answers_ok(&mut tcp, &check.path, &host.unwrap_or_else(|| addr.to_string())),
        Probe::Tls(tls) => {
            let Ok(mut session) = rustls::ClientConnection::new(tls.config.clone(), tls.sni.clone()) else {
                return false;
            };
            let host = host.unwrap_or_else(|| tls.host.clone());
            // The handshake happens on the first write, and fails it.
            answers_ok(&mut rustls::Stream::new(&mut session, &mut tcp), &check.path, &host)
        }
    }
}

/// A socket whose every read and write may take only what is left until
/// `deadline`: a per-call timeout alone lets a server that sends a byte
/// now and then hold the checker, and every verdict of its group, forever.
struct Deadline {
    stream: TcpStream,
    deadline: Instant,
}

impl Deadline {
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "health check timed out"));
        }
        Ok(left)
    }
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        self.stream.read(buf)
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Send `GET path` and read the status line: a 2xx or 3xx passes.
fn answers_ok(stream: &mut (impl Read + Write), path: &str, host: &str) -> bool {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cascade-health\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).is_err() {
        return false;
    }
    // "HTTP/1.1 200"
    let status = std::str::from_utf8(&head[9..12]).ok().and_then(|s| s.parse::<u16>().ok());
    matches!(status, Some(200..=399))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    /// An origin that routes by name: 200 for `Host: origin.example`, 404
    /// for anything else.
    fn name_routed_origin() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut head = Vec::new();
                let mut byte = [0u8];
                while !head.ends_with(b"\r\n\r\n") && stream.read_exact(&mut byte).is_ok() {
                    head.push(byte[0]);
                }
                let known =
                    String::from_utf8_lossy(&head).to_ascii_lowercase().contains("\r\nhost: origin.example\r\n");
                let status = if known { "200 OK" } else { "404 Not Found" };
                let _ = write!(stream, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            }
        });
        addr
    }

    /// A reload that changes a group's check: the old group, still held by
    /// the old config's requests, stops checking once the new config is
    /// swapped in, or its verdicts (by the old check) and the new group's
    /// would take turns on the flag they share.
    #[test]
    fn a_replaced_groups_checker_stops_writing_the_verdicts_it_shared() {
        use crate::upstream::Upstreams;
        use std::collections::BTreeMap;
        let origin = name_routed_origin();
        let checking_host = |host: &str| {
            let check = HealthCheckConfig {
                host: Some(host.into()),
                interval: Duration::from_millis(10),
                ..check_within(Duration::from_secs(5))
            };
            let config = crate::upstream::tests::config(crate::config::Balance::RoundRobin, &[origin]);
            BTreeMap::from([("g".to_string(), crate::config::UpstreamConfig { health_check: Some(check), ..config })])
        };
        let healthy = |upstreams: &Upstreams| upstreams.get("g").unwrap().servers()[0].is_healthy();
        let wait_until = |what: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !what() {
                assert!(Instant::now() < deadline, "the checker never reached its verdict");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        // The old check names a host the origin answers 404.
        let old = Upstreams::start(&checking_host("other.example"), None);
        wait_until(&|| !healthy(&old));
        let new = Upstreams::start(&checking_host("origin.example"), Some(&old));
        old.retire_replaced(&new);
        wait_until(&|| healthy(&new));
        // Many of the old checker's intervals. Still running, it would take
        // turns with the new one, down about half the time; retired, at
        // most a verdict it reached just before may land once, which the
        // new checker puts right at its next probe.
        let downs = (0..100)
            .filter(|_| {
                std::thread::sleep(Duration::from_millis(5));
                !healthy(&new)
            })
            .count();
        assert!(downs <= 10, "the replaced group's checker took the server down {downs} times in 100 looks");
        drop(old);
    }

    /// A check of `GET /healthz` that must pass within `timeout`.
    fn check_within(timeout: Duration) -> HealthCheckConfig {
        HealthCheckConfig {
            path: "/healthz".into(),
            host: None,
            interval: Duration::from_secs(1),
            timeout,
            unhealthy_threshold: 1,
            healthy_threshold: 1,
        }
    }

    #[test]
    fn the_probe_names_the_host_it_is_told() {
        let origin = name_routed_origin();
        let mut check = check_within(Duration::from_secs(10));
        assert!(!probe(origin, &check, &Probe::Http), "a bare address is answered 404 by a name-routed origin");
        check.host = Some("origin.example".into());
        assert!(probe(origin, &check, &Probe::Http));
    }

    /// A server that answers one byte at a time, each within the timeout,
    /// fails its check once the whole probe has taken the timeout.
    #[test]
    fn a_trickled_answer_fails_at_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n" {
                        std::thread::sleep(Duration::from_millis(300));
                        if stream.write_all(&[*byte]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let check = check_within(Duration::from_secs(1));
        assert!(!probe(addr, &check, &Probe::Http), "12 bytes, 300 ms apart, passed a 1 s check");
    }

    #[test]
    fn leftmost_underscores_are_checked_as_hyphens_as_pingora_does() {
        assert_eq!(leftmost_underscores_as_hyphens("my_svc.int.example").as_deref(), Some("my-svc.int.example"));
        assert_eq!(leftmost_underscores_as_hyphens("my_svc.example"), None, "not a subdomain");
        assert_eq!(leftmost_underscores_as_hyphens("svc.in_t.example"), None, "only the leftmost label");
        assert_eq!(leftmost_underscores_as_hyphens("localhost"), None);
    }
}
