//! Active health checks: a thread per checked group probes each server with
//! `GET <path>` and marks it down after `unhealthy_threshold` failures in a
//! row, up again after `healthy_threshold` passes. A 2xx or 3xx passes. A TLS
//! tier is probed with a TCP connect only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Weak;
use std::sync::atomic::Ordering;

use super::UpstreamGroup;
use crate::config::HealthCheckConfig;

pub fn spawn_checker(group: Weak<UpstreamGroup>, check: HealthCheckConfig) {
    let spawned = std::thread::Builder::new().name("cascade-health".into()).spawn(move || {
        // Consecutive results per server: positive passes, negative failures.
        let mut streaks: Vec<i64> = Vec::new();
        loop {
            let Some(group) = group.upgrade() else { return };
            streaks.resize(group.servers.len(), 0);
            let tls = group.config.tls.is_some();
            for (server, streak) in group.servers.iter().zip(streaks.iter_mut()) {
                let passed = probe(server.addr, &check, tls);
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

fn probe(addr: SocketAddr, check: &HealthCheckConfig, tls: bool) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, check.timeout) else {
        return false;
    };
    if tls {
        return true;
    }
    let _ = stream.set_read_timeout(Some(check.timeout));
    let _ = stream.set_write_timeout(Some(check.timeout));
    let host = check.host.clone().unwrap_or_else(|| addr.to_string());
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cascade-health\r\nConnection: close\r\n\r\n",
        check.path
    );
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
        assert!(!probe(origin, &check, false), "a bare address is answered 404 by a name-routed origin");
        check.host = Some("origin.example".into());
        assert!(probe(origin, &check, false));
    }
}
