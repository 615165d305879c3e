//! The on-disk shape of `cascade.toml` and the route files, exactly as users
//! write them. Nothing here is validated beyond its type; `config::load` turns
//! these into the checked model in `config::model`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// `conf/cascade.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MainFile {
    /// Route file patterns, relative to this file. `*` matches within a name.
    #[serde(default)]
    pub routes: Vec<Spanned<String>>,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub admin: AdminSection,
    pub modules: ModulesSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<UpstreamSection>>,
    #[serde(default)]
    pub rate_limits: BTreeMap<String, Spanned<RateLimitSection>>,
    #[serde(default)]
    pub kv_stores: BTreeMap<String, Spanned<KvStoreSection>>,
    #[serde(default)]
    pub jwt: JwtSection,
    #[serde(default)]
    pub cache: CacheSection,
    #[serde(default)]
    pub dns: DnsSection,
}

/// `[dns]`: how upstream server names are resolved.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Nameservers (`ip:port`) to ask instead of the system's resolver.
    pub nameservers: Vec<Spanned<String>>,
    /// How often names are resolved again while they serve; 0: only at
    /// load.
    pub refresh_secs: u64,
}

impl Default for DnsSection {
    fn default() -> Self {
        Self { nameservers: Vec::new(), refresh_secs: 30 }
    }
}

/// `[cache]`: the edge cache shared by every route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Whether routes cache unless they say otherwise.
    pub enabled: bool,
    /// Bodies and headers kept at once; least recently used entries go first.
    pub max_size_mb: u64,
    /// The largest body one entry may hold; an eighth of `max_size_mb` when
    /// not set.
    pub max_object_mb: Option<Spanned<u64>>,
    /// How long a request waits for another request fetching the same key.
    pub lock_timeout_ms: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self { enabled: true, max_size_mb: 256, max_object_mb: None, lock_timeout_ms: 5_000 }
    }
}

/// `[rate_limits.<name>]`: a GCRA policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Sustained requests per `per`.
    pub rate: u32,
    #[serde(default)]
    pub per: RatePeriod,
    /// Bucket size: requests allowed at once. Defaults to `rate`.
    pub burst: Option<u32>,
    /// Keys tracked at once before new keys share an overflow bucket.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_max_keys() -> usize {
    100_000
}

/// `[kv_stores.<name>]`: a key-value store filters and the admin API share.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvStoreSection {
    /// Keys held at once; a full store refuses new ones.
    #[serde(default = "default_kv_max_keys")]
    pub max_keys: usize,
    /// The longest value, in bytes.
    #[serde(default = "default_kv_max_value_bytes")]
    pub max_value_bytes: usize,
    /// Whether filters may write, or only read what the admin API wrote.
    #[serde(default = "default_true")]
    pub filters_may_write: bool,
    /// A file the contents are kept in across restarts, relative to this
    /// file.
    #[serde(default)]
    pub file: Option<String>,
}

fn default_kv_max_keys() -> usize {
    10_000
}

fn default_kv_max_value_bytes() -> usize {
    4_096
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RatePeriod {
    #[default]
    Second,
    Minute,
    Hour,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    #[serde(default)]
    pub keysets: BTreeMap<String, Spanned<KeysetSection>>,
}

/// `[jwt.keysets.<name>]`: keys and rules for verifying tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysetSection {
    /// Allowed `alg` values, for example `["RS256"]`.
    pub algorithms: Vec<String>,
    /// Environment variable holding an HMAC secret.
    pub secret_env: Option<String>,
    /// File holding an HMAC secret (trailing newline ignored).
    pub secret_file: Option<String>,
    /// PEM public keys (RSA or EC).
    #[serde(default)]
    pub public_key_files: Vec<String>,
    /// A JWKS document.
    pub jwks_file: Option<String>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Accepted `aud` values; the token must name one.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Verified tokens remembered, so a repeated token skips the signature
    /// check; 0 turns the cache off.
    #[serde(default = "default_token_cache_size")]
    pub cache_size: usize,
}

fn default_token_cache_size() -> usize {
    4096
}

fn default_leeway() -> u64 {
    30
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub listen: Spanned<String>,
    pub threads: usize,
    pub tls: Option<TlsSection>,
    /// This node's name in `CDN-Loop` and `Via`.
    pub node_id: Option<Spanned<String>>,
    /// Longest request target (path and query).
    pub max_uri_bytes: usize,
    /// Most request headers, and their total size.
    pub max_headers: Spanned<usize>,
    pub max_header_kb: Spanned<usize>,
    /// Largest request body.
    pub max_body_mb: u64,
    /// How long a request body may go without a byte.
    pub body_timeout_secs: Spanned<u64>,
    /// On SIGTERM, how long requests in flight have to finish.
    pub shutdown_grace_secs: u64,
    /// Peers whose `X-Forwarded-Proto` and `X-Forwarded-For` are believed.
    pub trusted_proxies: Vec<Spanned<String>>,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: Spanned::new(0..0, "0.0.0.0:8080".into()),
            threads: 2,
            tls: None,
            node_id: None,
            max_uri_bytes: 8 * 1024,
            max_headers: Spanned::new(0..0, 100),
            max_header_kb: Spanned::new(0..0, 60),
            max_body_mb: 100,
            body_timeout_secs: Spanned::new(0..0, 60),
            shutdown_grace_secs: 10,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub listen: Spanned<String>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    pub listen: Spanned<String>,
    pub token_env: Option<String>,
    pub token_file: Option<Spanned<String>>,
    /// Largest accepted request body (a module upload).
    pub max_upload_mb: u64,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: Spanned::new(0..0, "127.0.0.1:9901".into()),
            token_env: None,
            token_file: None,
            max_upload_mb: 64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModulesSection {
    pub dir: Spanned<String>,
    pub store: Option<String>,
    /// Versions of each uploaded module the store keeps; 10 when not set.
    pub keep_versions: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub filter_timeout_ms: u64,
    pub filter_memory_mb: Spanned<u64>,
    pub max_instances: u32,
    pub idle_instance_timeout_secs: u64,
    /// What a fail-closed filter failure answers; 500 when not set.
    pub failure_status: Option<Spanned<u16>>,
    pub breaker: BreakerSection,
    /// Limits on what a filter hands back (see `config::OutputLimits`).
    pub max_header_value_kb: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_reply_body_kb: Option<usize>,
}

impl Default for LimitsSection {
    /// `Limits::default()`, the one place the documented defaults live.
    fn default() -> Self {
        let limits = super::Limits::default();
        Self {
            filter_timeout_ms: limits.filter_timeout.as_millis() as u64,
            filter_memory_mb: Spanned::new(0..0, limits.filter_memory_bytes >> 20),
            max_instances: limits.max_instances,
            idle_instance_timeout_secs: limits.idle_instance_timeout.as_secs(),
            failure_status: None,
            breaker: BreakerSection::default(),
            max_header_value_kb: None,
            max_headers: None,
            max_reply_body_kb: None,
        }
    }
}

/// `[limits.breaker]`, and a chain entry's `breaker` overrides: a field left
/// out keeps the global value.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSection {
    pub enabled: Option<bool>,
    /// Open when more than this share of calls in the window failed.
    pub failure_ratio: Option<f64>,
    /// Calls needed in the window before the ratio counts.
    pub min_requests: Option<u32>,
    pub window_secs: Option<u64>,
    /// How long the breaker stays open before a probe.
    pub cooldown_secs: Option<u64>,
}

/// `[upstreams.<name>]`: either a tier of `servers`, or an ordered list of
/// `tiers` (other groups) to fail over through.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    #[serde(default)]
    pub servers: Vec<Spanned<String>>,
    #[serde(default)]
    pub tiers: Vec<Spanned<String>>,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// How long a server that failed a connection stays out of rotation.
    #[serde(default = "default_fail_timeout_ms")]
    pub fail_timeout_ms: u64,
    /// Connect with TLS, verifying the certificate against `sni`.
    #[serde(default)]
    pub tls: bool,
    /// The name sent in SNI and checked in the certificate. Defaults to the
    /// host part of the server address.
    pub sni: Option<String>,
    /// A PEM CA certificate to trust instead of the system roots.
    pub ca_file: Option<Spanned<String>>,
    /// Statuses from this tier that send the request on to the next tier.
    #[serde(default = "default_failover_statuses")]
    pub failover_on: Vec<u16>,
    /// Upstream attempts one request may make across the tiers.
    pub max_attempts: Option<usize>,
    pub health_check: Option<HealthCheckSection>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    #[default]
    RoundRobin,
    /// Rendezvous hashing on the cache key: a key sticks to one server.
    ConsistentHash,
}

pub fn default_failover_statuses() -> Vec<u16> {
    vec![502, 503, 504]
}

/// `[upstreams.<name>.health_check]`: an active HTTP probe of each server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    #[serde(default = "default_health_path")]
    pub path: String,
    /// The probe's `Host`; the server's address when not set.
    pub host: Option<Spanned<String>>,
    #[serde(default = "default_health_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_health_timeout_ms")]
    pub timeout_ms: u64,
    /// Failed probes in a row that mark a server down.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Passed probes in a row that bring it back.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
}

fn default_health_path() -> String {
    "/".into()
}
fn default_health_interval_ms() -> u64 {
    2_000
}
fn default_health_timeout_ms() -> u64 {
    1_000
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_healthy_threshold() -> u32 {
    2
}

pub fn default_connect_timeout_ms() -> u64 {
    2_000
}

pub fn default_read_timeout_ms() -> u64 {
    30_000
}

pub fn default_fail_timeout_ms() -> u64 {
    10_000
}

/// One `conf/routes/*.toml` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    #[serde(default)]
    pub route: Vec<RouteSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub name: Spanned<String>,
    #[serde(default = "any_host")]
    pub host: Spanned<String>,
    #[serde(default = "root_prefix")]
    pub path_prefix: Spanned<String>,
    pub upstream: Spanned<String>,
    #[serde(default)]
    pub filters: Vec<FilterSection>,
    #[serde(default)]
    pub cache: RouteCacheSection,
}

/// `[route.cache]`: this route's cache policy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheSection {
    /// Overrides `[cache] enabled`.
    pub enabled: Option<bool>,
    /// Freshness for every storable response, instead of the origin's.
    pub ttl_secs: Option<u64>,
    /// Leave the query string out of the cache key.
    #[serde(default)]
    pub ignore_query: bool,
    /// Leave these query parameters out of the cache key.
    #[serde(default)]
    pub ignore_query_params: Vec<String>,
    /// Add these request headers, as the filters left them, to the cache key
    /// (the variant header of an A/B test, say).
    #[serde(default)]
    pub key_headers: Vec<String>,
}

fn any_host() -> Spanned<String> {
    Spanned::new(0..0, "*".into())
}

fn root_prefix() -> Spanned<String> {
    Spanned::new(0..0, "/".into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSection {
    pub module: Spanned<String>,
    #[serde(default)]
    pub on_error: OnErrorSetting,
    /// Any table; handed to the filter as JSON.
    #[serde(default)]
    pub config: Option<Spanned<toml::Table>>,
    /// Overrides `limits.filter_timeout_ms` for this entry.
    pub timeout_ms: Option<u64>,
    /// Overrides `limits.filter_memory_mb` for this entry, below it.
    pub memory_mb: Option<Spanned<u64>>,
    /// Serve many requests, one at a time, with each instance.
    #[serde(default)]
    pub reuse_instances: bool,
    /// The upstream groups the filter may send its own requests to.
    #[serde(default)]
    pub outbound: Vec<Spanned<String>>,
    /// Overrides `limits.failure_status` for this entry.
    pub failure_status: Option<Spanned<u16>>,
    /// Overrides fields of `[limits.breaker]` for this entry.
    pub breaker: Option<BreakerSection>,
    /// Override the `[limits]` output limits for this entry.
    pub max_header_value_kb: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_reply_body_kb: Option<usize>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnErrorSetting {
    #[default]
    FailClosed,
    FailOpen,
}
