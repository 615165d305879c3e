//! Upstream groups and the cascade of tiers a request walks through.
//!
//! A group of `servers` is one tier: it picks a server round-robin, or by
//! rendezvous hashing on the cache key so that each regional shard keeps
//! seeing the same keys. A group of `tiers` names such groups in order; the
//! proxy starts at the first and fails over to the next (see `service`).
//! Servers that fail their active health checks are skipped while another
//! server in the tier is up.

pub mod dns;
mod health;

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;

use crate::config::{Balance, NamedServer, UpstreamConfig};

/// One server of a tier and what the health checker last concluded. The
/// verdict is shared with the same server in the groups of later configs.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    /// After a failed connection, the server is out of rotation until this
    /// time (on [`now_ms`]'s clock; 0: it is not), as nginx's `fail_timeout`
    /// does: no request waits on a dead server's connect timeout while a
    /// live one is at hand, health checks or not.
    /// Shared, as `healthy` is, with the same server in the group a
    /// reload or a name's new answer replaces.
    unreachable_until: Arc<AtomicU64>,
}

impl Server {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, healthy: Arc::new(AtomicBool::new(true)), unreachable_until: Arc::new(AtomicU64::new(0)) }
    }

    /// `addr`, carrying over what is known of it as `before`: a server a
    /// failed connection took out stays out its time, and with
    /// `share_health` it shares the health checker's verdict.
    fn carried_over(addr: SocketAddr, before: Option<&Server>, share_health: bool) -> Self {
        let mut server = Self::new(addr);
        if let Some(old) = before {
            server.unreachable_until = old.unreachable_until.clone();
            if share_health {
                server.healthy = old.healthy.clone();
            }
        }
        server
    }

    /// What the health checker last concluded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Healthy, and not recently unreachable: requests may be sent to it.
    pub fn in_rotation(&self) -> bool {
        let until = self.unreachable_until.load(Ordering::Relaxed);
        self.is_healthy() && (until == 0 || now_ms() >= until)
    }
}

/// Milliseconds on a monotonic clock that starts with the process.
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

/// One upstream group: a tier of servers, or a list of tiers.
pub struct UpstreamGroup {
    pub config: UpstreamConfig,
    /// The servers now: those given by name change when their addresses do.
    servers: ArcSwap<Vec<Server>>,
    next: AtomicUsize,
    /// The CA from `ca_file`, in the form Pingora's connector takes.
    ca: Option<Arc<[WrappedX509]>>,
    /// Servers a name's answer dropped, latest last, with what was known of
    /// them: an address that comes back (a flapping answer, a rotating
    /// pool) is not taken for new, which would put a server its checks took
    /// down back in rotation.
    departed: std::sync::Mutex<Vec<Server>>,
    /// What each server name resolved to last (the DNS refresher keeps
    /// it): a reload made while the nameserver is down falls back on it.
    answers: std::sync::Mutex<Vec<NamedServer>>,
    /// A reload replaced this group: its health checker and DNS refresher
    /// stop, though requests of the old config may still hold it. Its
    /// checker, probing as the old config said, would otherwise go on
    /// writing the verdicts it shares with the group serving now.
    retired: AtomicBool,
}

/// How many servers a group remembers after a name's answer dropped them.
const DEPARTED_KEPT: usize = 64;

impl std::fmt::Debug for UpstreamGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamGroup").field("name", &self.config.name).field("servers", &self.servers()).finish()
    }
}

impl UpstreamGroup {
    pub fn new(config: UpstreamConfig) -> Self {
        Self::carrying_over(config, None)
    }

    /// A group for `config` whose servers carry over what `before` knows of
    /// them (see [`Server::carried_over`]).
    fn carrying_over(config: UpstreamConfig, before: Option<&UpstreamGroup>) -> Self {
        let share_health = config.health_check.is_some();
        let servers = match before {
            Some(before) => {
                let (serving, departed) = (before.servers(), before.departed.lock().unwrap_or_else(|e| e.into_inner()));
                let carried = |&addr| Server::carried_over(addr, known(&serving, &departed, addr), share_health);
                config.servers.iter().map(carried).collect()
            }
            None => config.servers.iter().map(|&addr| Server::new(addr)).collect(),
        };
        let ca = config.tls.as_ref().and_then(|tls| tls.ca_der.clone()).map(|der| {
            let cert = WrappedX509::new(der, pingora::utils::tls::parse_x509);
            Arc::from(vec![cert])
        });
        let answers = config.names.as_ref().map_or_else(Vec::new, |n| n.names.clone());
        Self {
            config,
            servers: ArcSwap::from_pointee(servers),
            next: AtomicUsize::new(0),
            ca,
            departed: Default::default(),
            answers: std::sync::Mutex::new(answers),
            retired: AtomicBool::new(false),
        }
    }

    /// The servers now.
    pub fn servers(&self) -> arc_swap::Guard<Arc<Vec<Server>>> {
        self.servers.load()
    }

    /// Serve `addrs` from now on (the names resolved to them): a server that
    /// stays, or comes back, keeps its state; a new one starts in rotation.
    fn replace_servers(&self, addrs: &[SocketAddr]) {
        let before = self.servers();
        let mut departed = self.departed.lock().unwrap_or_else(|e| e.into_inner());
        let servers: Vec<Server> =
            addrs.iter().map(|&addr| Server::carried_over(addr, known(&before, &departed, addr), true)).collect();
        // A server is serving or departed, never both.
        departed.retain(|old| !addrs.contains(&old.addr));
        for gone in before.iter().filter(|old| !addrs.contains(&old.addr)) {
            departed.push(Server::carried_over(gone.addr, Some(gone), true));
        }
        let excess = departed.len().saturating_sub(DEPARTED_KEPT);
        departed.drain(..excess);
        self.servers.store(Arc::new(servers));
    }

    /// Record the names' latest answers (see `answers`).
    fn record_answers(&self, names: &[NamedServer]) {
        *self.answers.lock().unwrap_or_else(|e| e.into_inner()) = names.to_vec();
    }

    /// Where server name `host:port` pointed last, if this group follows it.
    fn last_answer(&self, host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        let answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        answers.iter().find(|name| name.host == host && name.port == port).map(|name| name.addrs.clone())
    }

    /// Stop this group's health checker and DNS refresher: a reload
    /// replaced it (see [`Upstreams::retire_replaced`]).
    fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// A server for a request whose cache key hashes to `key_hash`, among the
    /// healthy ones the request has not `failed` to connect to; `None` when
    /// there is none.
    pub fn pick(&self, key_hash: u64, failed: &[SocketAddr]) -> Option<SocketAddr> {
        let servers = self.servers();
        let healthy = || candidates(&servers, failed);
        match self.config.balance {
            Balance::RoundRobin => {
                let up = healthy().count();
                if up == 0 {
                    return None;
                }
                // A retry takes the next server without turning the wheel,
                // or a dead server would be every request's first.
                let n = match failed.is_empty() {
                    true => self.next.fetch_add(1, Ordering::Relaxed) % up,
                    false => self.next.load(Ordering::Relaxed) % up,
                };
                // Health may change between the count and the pick.
                healthy().nth(n).or_else(|| healthy().next()).map(|s| s.addr)
            }
            // Rendezvous hashing: the server with the highest score for this
            // key wins, so losing a server moves only that server's keys.
            Balance::ConsistentHash => healthy().max_by_key(|s| score(key_hash, s.addr)).map(|s| s.addr),
        }
    }

    /// Whether a healthy server other than `failed` is left.
    pub fn has_server_besides(&self, failed: &[SocketAddr]) -> bool {
        candidates(&self.servers(), failed).next().is_some()
    }

    /// `addr` refused a connection or timed out: out of rotation for this
    /// tier's `fail_timeout`.
    pub fn mark_unreachable(&self, addr: SocketAddr) {
        if self.config.fail_timeout.is_zero() {
            return;
        }
        if let Some(server) = self.servers().iter().find(|s| s.addr == addr) {
            let until = now_ms() + self.config.fail_timeout.as_millis() as u64;
            server.unreachable_until.store(until, Ordering::Relaxed);
            log::warn!(
                "upstream {} server {addr} is out of rotation for {:?}: a connection failed",
                self.name(),
                self.config.fail_timeout
            );
        }
    }

    /// A server even when all are marked down: the health checker may be
    /// wrong, and trying beats refusing (nginx does the same).
    pub fn any_server(&self) -> SocketAddr {
        let servers = self.servers();
        servers[self.next.fetch_add(1, Ordering::Relaxed) % servers.len()].addr
    }

    /// A peer for `addr` with this tier's timeouts and TLS settings.
    pub fn peer(&self, addr: SocketAddr) -> Box<HttpPeer> {
        let (tls, sni) = match &self.config.tls {
            Some(tls) => (true, tls.sni.clone()),
            None => (false, String::new()),
        };
        let mut peer = HttpPeer::new(addr, tls, sni);
        peer.options.connection_timeout = Some(self.config.connect_timeout);
        peer.options.read_timeout = Some(self.config.read_timeout);
        peer.options.write_timeout = Some(self.config.read_timeout);
        peer.options.ca = self.ca.clone();
        Box::new(peer)
    }
}

/// What is known of `addr`: among the servers `serving`, or those a name's
/// answer dropped.
fn known<'a>(serving: &'a [Server], departed: &'a [Server], addr: SocketAddr) -> Option<&'a Server> {
    serving.iter().chain(departed).find(|server| server.addr == addr)
}

/// The `servers` in rotation but those in `failed`.
fn candidates<'a>(servers: &'a [Server], failed: &'a [SocketAddr]) -> impl Iterator<Item = &'a Server> {
    servers.iter().filter(|s| s.in_rotation() && !failed.contains(&s.addr))
}

fn score(key_hash: u64, addr: SocketAddr) -> u64 {
    let mut hasher = StableHasher::default();
    hasher.write(&key_hash.to_le_bytes());
    match addr.ip() {
        std::net::IpAddr::V4(ip) => hasher.write(&ip.octets()),
        std::net::IpAddr::V6(ip) => hasher.write(&ip.octets()),
    }
    hasher.write(&addr.port().to_le_bytes());
    hasher.finish()
}

/// FNV-1a, 64 bits, finalized: the same on every build, so edges built by different
/// compilers send a key to the same regional server (std's `DefaultHasher`
/// may change between Rust releases).
struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        // FNV alone barely moves its high bits for inputs that differ in the
        // last bytes (servers a port apart): MurmurHash3's finalizer mixes
        // every bit into every other.
        let mut h = self.0;
        h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Every upstream group, by name.
#[derive(Debug, Default)]
pub struct Upstreams(BTreeMap<String, Arc<UpstreamGroup>>);

impl Upstreams {
    /// Build the groups and start health checks for those that ask for them.
    /// The checkers stop once these groups are dropped (after a reload).
    ///
    /// On a reload, `previous` holds the groups serving until now. A group
    /// the reload leaves unchanged is kept whole, checker and all. In a
    /// changed group, a server that is still health-checked shares its
    /// verdict with the old group (whose checker runs on until the old
    /// reload is swapped in, see [`Self::retire_replaced`]), so a reload never
    /// puts a dead server back into rotation.
    pub fn start(configs: &BTreeMap<String, UpstreamConfig>, previous: Option<&Upstreams>) -> Arc<Self> {
        let mut groups = BTreeMap::new();
        for (name, config) in configs {
            let before = previous.and_then(|p| p.0.get(name));
            if let Some(unchanged) = before.filter(|b| b.config == *config) {
                groups.insert(name.clone(), unchanged.clone());
                continue;
            }
            let group = Arc::new(UpstreamGroup::carrying_over(config.clone(), before.map(|b| b.as_ref())));
            if let Some(check) = &group.config.health_check {
                health::spawn_checker(Arc::downgrade(&group), check.clone());
            }
            if let Some(names) = &group.config.names {
                dns::spawn_refresher(Arc::downgrade(&group), names.dns.refresh);
            }
            groups.insert(name.clone(), group);
        }
        Arc::new(Self(groups))
    }

    /// The groups of `self` that `serving` (the snapshot swapped in for
    /// `self`'s) does not keep stop their checks: only the groups serving
    /// write the health verdicts they share.
    pub fn retire_replaced(&self, serving: &Upstreams) {
        for (name, group) in &self.0 {
            if !serving.0.get(name).is_some_and(|now| Arc::ptr_eq(now, group)) {
                group.retire();
            }
        }
    }

    /// Where server name `host:port` pointed last in any group that follows
    /// it (see [`crate::config::load_knowing`]).
    pub fn last_answer(&self, host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        self.groups().find_map(|group| group.last_answer(host, port))
    }

    pub fn groups(&self) -> impl Iterator<Item = &UpstreamGroup> {
        self.0.values().map(|g| g.as_ref())
    }

    pub fn get(&self, name: &str) -> Option<&UpstreamGroup> {
        self.0.get(name).map(|g| g.as_ref())
    }

    /// Tier `index` of group `name`: a plain group is its own only tier.
    pub fn tier(&self, name: &str, index: usize) -> Option<&UpstreamGroup> {
        let group = self.get(name)?;
        match group.config.tiers.get(index) {
            Some(tier) => self.get(tier),
            None if group.config.tiers.is_empty() && index == 0 => Some(group),
            None => None,
        }
    }
}

/// A stable hash of a cache key, for consistent hashing.
pub fn key_hash(key: &str) -> u64 {
    let mut hasher = StableHasher::default();
    hasher.write(key.as_bytes());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn group(balance: Balance, servers: &[SocketAddr]) -> UpstreamGroup {
        UpstreamGroup::new(config(balance, servers))
    }

    pub(super) fn config(balance: Balance, servers: &[SocketAddr]) -> UpstreamConfig {
        UpstreamConfig {
            name: "g".into(),
            servers: servers.to_vec(),
            tiers: Vec::new(),
            balance,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            fail_timeout: Duration::from_secs(600),
            tls: None,
            failover_statuses: vec![502],
            max_attempts: 1,
            health_check: None,
            names: None,
        }
    }

    #[test]
    fn a_reload_keeps_what_the_health_checker_concluded() {
        // A checker that will not change anything during the test.
        let check = crate::config::HealthCheckConfig {
            path: "/".into(),
            host: None,
            interval: Duration::from_secs(3600),
            timeout: Duration::from_millis(10),
            unhealthy_threshold: 1000,
            healthy_threshold: 1000,
        };
        let groups = |servers: &[SocketAddr], check: Option<crate::config::HealthCheckConfig>| {
            let config = UpstreamConfig { health_check: check, ..config(Balance::RoundRobin, servers) };
            BTreeMap::from([("g".to_string(), config)])
        };
        let health = |upstreams: &Upstreams| -> Vec<bool> {
            upstreams.get("g").unwrap().servers().iter().map(Server::is_healthy).collect()
        };
        let servers = addrs(3);
        let before = Upstreams::start(&groups(&servers[..2], Some(check.clone())), None);
        before.get("g").unwrap().servers()[0].healthy.store(false, Ordering::Relaxed);

        // The down server stays down; a server new to the group starts up.
        let after = Upstreams::start(&groups(&servers, Some(check.clone())), Some(&before));
        assert_eq!(health(&after), [false, true, true]);
        // A verdict the old checker reaches while the reload is still being
        // built (filters check their configs) reaches the new groups too.
        before.get("g").unwrap().servers()[1].healthy.store(false, Ordering::Relaxed);
        assert_eq!(health(&after), [false, false, true]);
        // Without a checker nothing could bring it back, so nothing is kept.
        let unchecked = Upstreams::start(&groups(&servers, None), Some(&before));
        assert_eq!(health(&unchecked), [true, true, true]);
        // A group the reload leaves as it was is kept whole, checker and all.
        let same = Upstreams::start(&groups(&servers, Some(check)), Some(&after));
        assert!(Arc::ptr_eq(&same.0["g"], &after.0["g"]));
    }

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (1..=n).map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect()
    }

    #[test]
    fn a_server_a_names_answer_drops_is_known_again_when_it_comes_back() {
        let servers = addrs(3);
        let g = group(Balance::RoundRobin, &servers[..2]);
        g.servers()[0].healthy.store(false, Ordering::Relaxed);
        g.mark_unreachable(servers[1]);
        // The answer drops both, then brings them back with a new one.
        g.replace_servers(&servers[2..]);
        g.replace_servers(&servers);
        let now = g.servers();
        assert!(!now[0].is_healthy(), "a server its checks took down came back healthy");
        assert!(!now[1].in_rotation(), "a server a failed connection took out came back in rotation");
        assert!(now[2].in_rotation(), "a new server starts in rotation");
        // A reload that names them again knows them too.
        g.replace_servers(&servers[2..]);
        let reloaded = UpstreamGroup::carrying_over(config(Balance::RoundRobin, &servers), Some(&g));
        assert!(!reloaded.servers()[1].in_rotation());
    }

    #[test]
    fn a_key_goes_to_the_same_server_on_every_build() {
        // Pinned: a change here moves keys between regional servers when a
        // fleet is upgraded node by node.
        // FNV-1a with MurmurHash3's finalizer, computed apart from this code.
        assert_eq!(key_hash("example.com/a"), 0xd4f0_6c73_604f_1e86);
        assert_eq!(score(key_hash("example.com/a"), SocketAddr::from(([10, 0, 0, 1], 8080))), 0x6413_2237_facc_0a5b);
    }

    #[test]
    fn a_server_the_request_failed_to_reach_is_not_picked_again() {
        for balance in [Balance::RoundRobin, Balance::ConsistentHash] {
            let servers = addrs(3);
            let g = group(balance, &servers);
            let first = g.pick(7, &[]).unwrap();
            let second = g.pick(7, &[first]).unwrap();
            assert_ne!(first, second);
            let third = g.pick(7, &[first, second]).unwrap();
            assert!(third != first && third != second);
            assert_eq!(g.pick(7, &servers), None);
        }
    }

    #[test]
    fn an_unreachable_server_is_out_of_rotation_for_its_fail_timeout() {
        let servers = addrs(2);
        let g = group(Balance::RoundRobin, &servers);
        g.mark_unreachable(servers[0]);
        assert!((0..10).all(|_| g.pick(0, &[]) == Some(servers[1])));
        assert!(g.servers()[0].is_healthy(), "the health checker's verdict is its own");
        g.servers()[0].unreachable_until.store(now_ms(), Ordering::Relaxed);
        assert!((0..10).any(|_| g.pick(0, &[]) == Some(servers[0])), "back once the time is up");
    }

    #[test]
    fn round_robin_skips_unhealthy_servers() {
        let servers = addrs(3);
        let g = group(Balance::RoundRobin, &servers);
        let picked: Vec<SocketAddr> = (0..3).map(|_| g.pick(0, &[]).unwrap()).collect();
        assert_eq!(picked, servers);
        g.servers()[1].healthy.store(false, Ordering::Relaxed);
        assert!((0..10).all(|_| g.pick(0, &[]) != Some(servers[1])));
        g.servers().iter().for_each(|s| s.healthy.store(false, Ordering::Relaxed));
        assert_eq!(g.pick(0, &[]), None);
        assert!(servers.contains(&g.any_server()));
    }

    #[test]
    fn consistent_hash_moves_only_the_lost_servers_keys() {
        let servers = addrs(4);
        let g = group(Balance::ConsistentHash, &servers);
        let keys: Vec<u64> = (0..1000).map(|i| key_hash(&format!("/k{i}"))).collect();
        let before: Vec<SocketAddr> = keys.iter().map(|&k| g.pick(k, &[]).unwrap()).collect();
        // Every server gets a share, and a key always lands on the same one.
        for s in &servers {
            assert!(before.iter().filter(|a| *a == s).count() > 150, "{s} is starved");
        }
        assert_eq!(before, keys.iter().map(|&k| g.pick(k, &[]).unwrap()).collect::<Vec<_>>());
        g.servers()[2].healthy.store(false, Ordering::Relaxed);
        for (k, was) in keys.iter().zip(&before) {
            let now = g.pick(*k, &[]).unwrap();
            if *was != servers[2] {
                assert_eq!(now, *was, "a key moved although its server is up");
            } else {
                assert_ne!(now, servers[2]);
            }
        }
    }
}
