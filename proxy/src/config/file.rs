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
    pub jwt: JwtSection,
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
}

impl Default for ServerSection {
    fn default() -> Self {
        Self { listen: Spanned::new(0..0, "0.0.0.0:8080".into()), threads: 2, tls: None }
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
    pub token_file: Option<String>,
    /// Largest accepted request body (a module upload).
    pub max_upload_mb: u64,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: Spanned::new(0..0, "127.0.0.1:9901".into()),
            token_env: None,
            token_file: None,
            max_upload_mb: 16,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModulesSection {
    pub dir: Spanned<String>,
    pub store: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub filter_timeout_ms: u64,
    pub filter_memory_mb: u64,
    pub max_instances: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self { filter_timeout_ms: 50, filter_memory_mb: 16, max_instances: 10_000 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub servers: Vec<Spanned<String>>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
}

fn default_connect_timeout_ms() -> u64 {
    2_000
}

fn default_read_timeout_ms() -> u64 {
    30_000
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
    /// Overrides `limits.filter_memory_mb` for this entry.
    pub memory_mb: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnErrorSetting {
    #[default]
    FailClosed,
    FailOpen,
}
