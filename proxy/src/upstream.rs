//! Upstream groups: named sets of servers a route forwards to.
//!
//! A group picks its server round-robin. Tiers (an ordered list of groups with
//! failover between them) build on this: a tier is a group, and the cascade
//! walks the tiers in order.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use pingora::upstreams::peer::HttpPeer;

use crate::config::UpstreamConfig;

/// One upstream group and its round-robin cursor.
#[derive(Debug)]
pub struct UpstreamGroup {
    pub config: UpstreamConfig,
    next: AtomicUsize,
}

impl UpstreamGroup {
    pub fn new(config: UpstreamConfig) -> Self {
        Self { config, next: AtomicUsize::new(0) }
    }

    /// The next server, round-robin.
    pub fn next_server(&self) -> SocketAddr {
        let servers = &self.config.servers;
        servers[self.next.fetch_add(1, Ordering::Relaxed) % servers.len()]
    }

    /// A peer for the next server, with this group's timeouts.
    pub fn peer(&self) -> Box<HttpPeer> {
        let mut peer = HttpPeer::new(self.next_server(), false, String::new());
        peer.options.connection_timeout = Some(self.config.connect_timeout);
        peer.options.read_timeout = Some(self.config.read_timeout);
        peer.options.write_timeout = Some(self.config.read_timeout);
        Box::new(peer)
    }
}

/// Every upstream group, by name.
#[derive(Debug, Default)]
pub struct Upstreams(BTreeMap<String, UpstreamGroup>);

impl Upstreams {
    pub fn new(configs: &BTreeMap<String, UpstreamConfig>) -> Self {
        Self(configs.iter().map(|(name, config)| (name.clone(), UpstreamGroup::new(config.clone()))).collect())
    }

    pub fn get(&self, name: &str) -> Option<&UpstreamGroup> {
        self.0.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn round_robin() {
        let servers: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()];
        let group = UpstreamGroup::new(UpstreamConfig {
            name: "g".into(),
            servers: servers.clone(),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
        });
        let picked: Vec<SocketAddr> = (0..4).map(|_| group.next_server()).collect();
        assert_eq!(picked, [servers[0], servers[1], servers[0], servers[1]]);
    }
}
