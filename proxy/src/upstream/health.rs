//! Active health checks: a thread per checked group probes each server with
//! `GET <path>` and marks it down after `unhealthy_threshold` failures in a
//! row, up again after `healthy_threshold` passes. A 2xx or 3xx passes. A TLS
//! tier is probed over TLS, verified as the proxy's own connections are: a
//! server that accepts connections but cannot complete a handshake the
//! proxy would trust serves no request, so it fails its checks.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use pingora::tls::{CertificateDer, ClientConfig, RootCertStore, ServerName};

use super::UpstreamGroup;
use crate::config::{HealthCheckConfig, UpstreamTls};

pub fn spawn_checker(group: Weak<UpstreamGroup>, check: HealthCheckConfig) {
    let spawned = std::thread::Builder::new().name("cascade-health".into()).spawn(move || {
        let tls = match group.upgrade().and_then(|g| g.config.tls.clone()) {
            None => None,
            Some(tls) => match TlsProbe::new(&tls) {
                Ok(probe) => Some(probe),
                Err(e) => {
                    let name = group.upgrade().map(|g| g.name().to_string()).unwrap_or_default();
                    return log::error!("upstream {name}: health checks are off: {e}");
                }
            },
        };
        // Consecutive results per server: positive passes, negative failures.
        let mut streaks: Vec<i64> = Vec::new();
        loop {
            let Some(group) = group.upgrade() else { return };
            streaks.resize(group.servers.len(), 0);
            for (server, streak) in group.servers.iter().zip(streaks.iter_mut()) {
                let passed = probe(server.addr, &check, tls.as_ref());
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
            drop(group);
            std::thread::sleep(check.interval);
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot start a health checker: {e}");
    }
}

/// How a TLS tier's servers are probed: the tier's CA (else the system's
/// roots) and its SNI name, which the certificate must match, as Pingora's
/// connector checks them on the request path.
struct TlsProbe {
    config: Arc<ClientConfig>,
    sni: ServerName<'static>,
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
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let sni = ServerName::try_from(tls.sni.clone()).map_err(|e| format!("sni {:?}: {e}", tls.sni))?;
        Ok(Self { config: Arc::new(config), sni })
    }
}

/// One probe of `addr`: `true` if it answers the check's `GET` with a 2xx or
/// 3xx in time, over TLS when `tls` is given.
fn probe(addr: SocketAddr, check: &HealthCheckConfig, tls: Option<&TlsProbe>) -> bool {
    let Ok(mut tcp) = TcpStream::connect_timeout(&addr, check.timeout) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(check.timeout));
    let _ = tcp.set_write_timeout(Some(check.timeout));
    // A name-routed origin behind TLS is named by its SNI name.
    let host = match (&check.host, tls) {
        (Some(host), _) => host.clone(),
        (None, Some(tls)) => tls.sni.to_str().into_owned(),
        (None, None) => addr.to_string(),
    };
    let Some(tls) = tls else { return answers_ok(&mut tcp, &check.path, &host) };
    let Ok(mut session) = rustls::ClientConnection::new(tls.config.clone(), tls.sni.clone()) else {
        return false;
    };
    // The handshake happens on the first write, and fails it.
    answers_ok(&mut rustls::Stream::new(&mut session, &mut tcp), &check.path, &host)
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

    #[test]
    fn the_probe_names_the_host_it_is_told() {
        let origin = name_routed_origin();
        let mut check = HealthCheckConfig {
            path: "/healthz".into(),
            host: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            unhealthy_threshold: 1,
            healthy_threshold: 1,
        };
        assert!(!probe(origin, &check, None), "a bare address is answered 404 by a name-routed origin");
        check.host = Some("origin.example".into());
        assert!(probe(origin, &check, None));
    }
}
