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
        Self {
            listen: Spanned::new(0..0, "0.0.0.0:8080".into()),
            threads: 2,
            tls: None,
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
    pub token_file: Option<String>,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: Spanned::new(0..0, "127.0.0.1:9901".into()),
            token_env: None,
            token_file: None,
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
        Self {
            filter_timeout_ms: 50,
            filter_memory_mb: 16,
            max_instances: 10_000,
        }
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
