//! The checked, internal configuration model. File shapes live in `file.rs`;
//! everything else in the proxy reads only these types.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Location;
use crate::route::HostPattern;

#[derive(Debug, Clone)]
pub struct Config {
    /// The main file this was loaded from.
    pub path: PathBuf,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub modules: ModulesConfig,
    pub limits: Limits,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub rate_limits: BTreeMap<String, RateLimitPolicyConfig>,
    pub kv_stores: BTreeMap<String, KvStoreConfig>,
    pub jwt_keysets: BTreeMap<String, KeysetConfig>,
    pub cache: CacheConfig,
}

/// The edge cache. Its size is fixed at start; a reload keeps the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub max_size_bytes: usize,
    /// The largest response body one entry may hold.
    pub max_object_bytes: usize,
    pub lock_timeout: Duration,
}

/// A rate-limit policy: a bucket of `burst` refilled by one request every
/// `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicyConfig {
    pub name: String,
    pub burst: u32,
    pub interval: Duration,
    pub max_keys: usize,
}

/// A key-value store's bounds (`[kv_stores.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvStoreConfig {
    pub name: String,
    pub max_keys: usize,
    pub max_value_bytes: usize,
    pub filters_may_write: bool,
    /// Where the contents are kept across restarts.
    pub file: Option<PathBuf>,
    pub at: Location,
}

/// Where a keyset's HMAC secret comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

/// A JWT keyset, with file paths resolved; keys are read when it is built.
#[derive(Debug, Clone)]
pub struct KeysetConfig {
    pub name: String,
    pub algorithms: Vec<String>,
    pub secret: Option<SecretSource>,
    pub public_key_files: Vec<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub leeway: Duration,
    /// How many verified tokens the keyset remembers (0: none).
    pub cache_size: usize,
    pub at: Location,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Worker threads for the proxy service.
    pub threads: usize,
    /// On SIGTERM, how long requests in flight have to finish.
    pub shutdown_grace: std::time::Duration,
    pub tls: Option<TlsConfig>,
    /// This node's name in `CDN-Loop` and `Via`.
    pub node_id: String,
    /// Made once, not per request: this node's `CDN-Loop` member (the node
    /// id) and its `Via` member, `1.1 <node_id>`.
    pub cdn_loop: http::HeaderValue,
    pub via: http::HeaderValue,
    /// This node's `Cache-Status` member for a request the cache never saw,
    /// `<node_id>; fwd=bypass`: every response of a route without caching.
    pub cache_status_bypass: http::HeaderValue,
    pub request_limits: RequestLimits,
    /// Peers (regional tiers' edges, load balancers) whose forwarding headers
    /// are believed: their `X-Forwarded-Proto: https`, and the client named
    /// in their `X-Forwarded-For`.
    pub trusted_proxies: Vec<IpNet>,
}

/// An address block, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a
/// block of one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IpNet {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        // A dual-stack listener sees IPv4 clients as `::ffff:a.b.c.d`.
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => Self::same_prefix(net.to_bits(), ip.to_bits(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => Self::same_prefix(net.to_bits(), ip.to_bits(), self.prefix),
            _ => false,
        }
    }

    fn same_prefix<T>(net: T, ip: T, prefix: u8) -> bool
    where
        T: std::ops::BitXor<Output = T> + std::ops::Shr<u32, Output = T> + PartialEq + Default,
    {
        let bits = (std::mem::size_of::<T>() * 8) as u32;
        let prefix = u32::from(prefix);
        prefix == 0 || (net ^ ip) >> (bits - prefix) == T::default()
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: std::net::IpAddr =
            addr.parse().map_err(|_| format!("{text:?} is not an IP address or block (10.0.0.0/8, 2001:db8::/32)"))?;
        let most = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => most,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= most)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {most}"))?,
        };
        // `::ffff:10.0.0.0/104` is `10.0.0.0/8`, as peers are compared.
        let canonical = addr.to_canonical();
        if canonical == addr {
            return Ok(Self { addr, prefix });
        }
        let prefix = prefix
            .checked_sub(96)
            .ok_or_else(|| format!("{text:?}: an IPv4-mapped block needs a prefix of 96 or more"))?;
        Ok(Self { addr: canonical, prefix })
    }
}

/// The largest linear memory a filter instance may have
/// (`limits.filter_memory_mb`).
pub const MAX_FILTER_MEMORY_BYTES: u64 = 256 << 20;

/// What a client's request may hold (Envoy's defaults for headers).
#[derive(Debug, Clone)]
pub struct RequestLimits {
    pub max_uri_bytes: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    /// How long the body may go without a byte (HTTP/1; nginx's
    /// `client_body_timeout`): then 408.
    pub body_timeout: std::time::Duration,
}

/// HTTPS with HTTP/2 (ALPN `h2`, falling back to HTTP/1.1).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct ModulesConfig {
    /// Every `*.wasm` here is loaded at start; the module name is the file stem.
    pub dir: PathBuf,
    /// Uploaded versions and the compiled-artifact cache.
    pub store: PathBuf,
    /// Versions of each uploaded module the store keeps, the active one
    /// among them; an upload forgets the rest (`StoredModule::retain_recent`
    /// says which go first).
    pub keep_versions: usize,
}

/// Sandbox limits for filter instances.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Default CPU deadline for one filter call.
    pub filter_timeout: Duration,
    /// Default linear-memory cap for one filter instance.
    pub filter_memory_bytes: u64,
    /// Filter instances alive at once, across all requests.
    pub max_instances: u32,
    /// How long an instance parked for reuse may sit idle before it is
    /// dropped, giving back its pool slot and memory.
    pub idle_instance_timeout: Duration,
    pub failure_status: u16,
    pub breaker: BreakerConfig,
    pub output: OutputLimits,
}

impl Default for Limits {
    /// The documented defaults (docs/SECURITY.md), as a config without
    /// `[limits]` gets them.
    fn default() -> Self {
        Self {
            filter_timeout: Duration::from_millis(50),
            filter_memory_bytes: 16 << 20,
            max_instances: 10_000,
            // nginx keeps an idle upstream connection as long.
            idle_instance_timeout: Duration::from_secs(60),
            failure_status: 500,
            breaker: BreakerConfig::default(),
            output: OutputLimits::default(),
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(5),
        }
    }
}

impl Default for OutputLimits {
    fn default() -> Self {
        Self { header_value_bytes: 16 << 10, header_count: 256, reply_body_bytes: 1 << 20 }
    }
}

/// When a chain entry's circuit breaker opens (see `filters::breaker`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    pub enabled: bool,
    pub failure_ratio: f64,
    pub min_requests: u32,
    pub window: Duration,
    pub cooldown: Duration,
}

impl BreakerConfig {
    /// These settings with the fields `section` sets.
    pub fn merged(&self, section: &super::file::BreakerSection) -> Self {
        Self {
            enabled: section.enabled.unwrap_or(self.enabled),
            failure_ratio: section.failure_ratio.unwrap_or(self.failure_ratio).clamp(0.0, 1.0),
            min_requests: section.min_requests.unwrap_or(self.min_requests).max(1),
            window: section.window_secs.map(|s| Duration::from_secs(s.max(1))).unwrap_or(self.window),
            cooldown: section.cooldown_secs.map(|s| Duration::from_secs(s.max(1))).unwrap_or(self.cooldown),
        }
    }
}

/// A named upstream group: a tier of servers, or an ordered list of tiers.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    /// The servers of a tier; empty when `tiers` is set.
    pub servers: Vec<SocketAddr>,
    /// Other groups (each a tier of servers), tried in order.
    pub tiers: Vec<String>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// How long a server that failed a connection is out of rotation
    /// (zero: never taken out).
    pub fail_timeout: Duration,
    pub tls: Option<UpstreamTls>,
    /// Statuses that send a request on to the next tier.
    pub failover_statuses: Vec<u16>,
    /// Upstream attempts one request may make, across tiers.
    pub max_attempts: usize,
    pub health_check: Option<HealthCheckConfig>,
    /// The servers given by name, resolved again every so often; `None`
    /// when every server is an address or names are resolved only at load.
    pub names: Option<ServerNames>,
}

/// The servers of a group given by name, and how to resolve them again.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerNames {
    pub names: Vec<NamedServer>,
    /// The servers given as addresses.
    pub fixed: Vec<SocketAddr>,
    pub dns: DnsConfig,
}

/// A server given by name.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedServer {
    pub host: String,
    pub port: u16,
    /// What it resolved to last.
    pub addrs: Vec<SocketAddr>,
}

/// `[dns]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DnsConfig {
    /// Empty: the system's resolver.
    pub nameservers: Vec<SocketAddr>,
    /// Zero: names are resolved at load only.
    pub refresh: Duration,
}

pub use super::file::Balance;

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    pub sni: String,
    /// DER of a CA to trust instead of the system roots.
    pub ca_der: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub path: String,
    /// The probe's `Host` (origins that route by name answer a bare
    /// address with a 4xx); `None`: the server's address.
    pub host: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

/// A route's cache policy.
#[derive(Debug, Clone, Default)]
pub struct RouteCachePolicy {
    pub enabled: bool,
    /// Freshness for every storable response, instead of the origin's.
    pub ttl: Option<Duration>,
    pub ignore_query: bool,
    pub ignore_query_params: Vec<String>,
    /// Request headers whose values, as the filters left them, join the key.
    pub key_headers: Vec<http::HeaderName>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub host: HostPattern,
    pub path_prefix: String,
    pub upstream: String,
    pub filters: Vec<FilterEntry>,
    pub cache: RouteCachePolicy,
    /// Where the route was declared, for error messages.
    pub at: Location,
}

/// One link of a route's filter chain.
#[derive(Debug, Clone)]
pub struct FilterEntry {
    pub module: String,
    pub on_error: OnError,
    /// The entry's `config` table as JSON, handed to the filter on request.
    pub config_json: Arc<str>,
    pub limits: FilterLimits,
    /// Keep instances that finished a request cleanly for later requests,
    /// instead of a fresh instance per request (`filters::reuse`).
    pub reuse_instances: bool,
    /// The upstream groups the filter may fetch from (`outbound.fetch`).
    pub outbound: Arc<[String]>,
    /// Where the entry was declared, for error messages.
    pub at: Location,
}

/// What a request gets when this filter fails (trap, deadline, memory cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Answer with a 5xx that carries the request id.
    FailClosed,
    /// Skip the filter and go on.
    FailOpen,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilterLimits {
    pub timeout: Duration,
    pub memory_bytes: u64,
    /// The status a fail-closed failure answers with.
    pub failure_status: u16,
    pub breaker: BreakerConfig,
    pub output: OutputLimits,
}

/// What a filter may hand back: header values, headers on a message after
/// its edits, and a reply body. Over a limit, a header edit is refused with
/// `limit-exceeded` and a reply counts as a failure of the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    pub header_value_bytes: usize,
    pub header_count: usize,
    pub reply_body_bytes: usize,
}

/// The most headers a filter may leave on a message, whatever the config
/// says: the `http` header map holds at most 32,768 entries and panics
/// past that.
pub const MAX_FILTER_HEADERS: usize = 10_000;

impl OutputLimits {
    /// These limits with the ones set: (`max_header_value_kb`,
    /// `max_headers`, `max_reply_body_kb`).
    pub fn merged(&self, (value_kb, headers, body_kb): (Option<usize>, Option<usize>, Option<usize>)) -> Self {
        Self {
            header_value_bytes: value_kb.map_or(self.header_value_bytes, |kb| kb.max(1) << 10),
            header_count: headers.map_or(self.header_count, |n| n.clamp(1, MAX_FILTER_HEADERS)),
            reply_body_bytes: body_kb.map_or(self.reply_body_bytes, |kb| kb << 10),
        }
    }
}
