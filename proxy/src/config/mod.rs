//! Configuration: `cascade.toml` plus the route files it names.
//!
//! [`load`] reads the files (shapes in [`file`]), checks everything that can be
//! checked without compiling modules, and returns the internal [`Config`] model.
//! Every error names the file, the line and the key at fault.

pub mod file;
mod model;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use model::*;

use crate::route::{HostPattern, normalize};
use file::{MainFile, RouteFile, UpstreamSection};
use toml::Spanned;

/// Where in which file a setting was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub key: String,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: key `{}`", self.file.display(), self.line, self.key)
    }
}

/// A configuration that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}:{column}: {message}{}", path.display(), key_hint(key))]
    Syntax { path: PathBuf, line: usize, column: usize, key: Option<String>, message: String },
    #[error("{at}: {message}")]
    Invalid { at: Location, message: String },
}

fn key_hint(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!(" (key `{k}`)")).unwrap_or_default()
}

/// A file's text, kept to turn byte spans into line numbers.
struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Ok(Self { path: path.to_path_buf(), text })
    }

    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let (line, column) = self.line_column(offset);
            let line_text = self.text.lines().nth(line - 1).unwrap_or("");
            let key = line_text
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"').to_string())
                .filter(|k| !k.is_empty() && !e.message().contains(&format!("`{k}`")));
            ConfigError::Syntax { path: self.path.clone(), line, column, key, message: e.message().trim().to_string() }
        })
    }

    fn line_column(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        (line, column)
    }

    fn at<T>(&self, spanned: &Spanned<T>, key: &str) -> Location {
        Location { file: self.path.clone(), line: self.line_column(spanned.span().start).0, key: key.to_string() }
    }

    fn invalid<T>(&self, spanned: &Spanned<T>, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid { at: self.at(spanned, key), message }
    }
}

/// Pingora's HTTP/1 parser reads at most 256 request headers, in under
/// 1 MiB (`v1::common::MAX_HEADERS`, `MAX_HEADER_SIZE`).
const PARSER_MAX_HEADERS: usize = 256;
const PARSER_MAX_HEADER_KB: usize = 1023;

/// As Kubernetes keeps ten revisions of a deployment to roll back to.
const DEFAULT_KEEP_VERSIONS: usize = 10;

/// Read and check `path` and every route file it names.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_knowing(path, &|_, _| None)
}

/// Where a server name pointed last, for a name that does not resolve now:
/// `None` if it is not known.
pub type LastAnswer<'a> = &'a dyn Fn(&str, u16) -> Option<Vec<SocketAddr>>;

/// [`load`], for a reload: a server name that does not resolve now (the
/// nameserver is down) keeps the addresses `last_answer` knows for it,
/// rather than refusing a change that may not touch it at all.
pub fn load_knowing(path: &Path, last_answer: LastAnswer) -> Result<Config, ConfigError> {
    let main = Source::read(path)?;
    let file: MainFile = main.parse()?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();

    let listen = socket_addr(&main, &file.server.listen, "server.listen")?;
    let node_id = match &file.server.node_id {
        None => default_node_id(listen.port()),
        Some(id) if !id.get_ref().is_empty() && id.get_ref().bytes().all(normalize::is_unreserved) => {
            id.get_ref().clone()
        }
        Some(id) => {
            let message = format!("{:?} must be a token: letters, digits and -._~ only", id.get_ref());
            return Err(main.invalid(id, "server.node_id", message));
        }
    };
    if *file.server.body_timeout_secs.get_ref() == 0 {
        let message = "must be at least 1: there is no 'off', and a stalled body would hold its connection".into();
        return Err(main.invalid(&file.server.body_timeout_secs, "server.body_timeout_secs", message));
    }
    // Pingora's parser stops at these itself, with its own error instead of
    // our 431: a larger limit would never apply.
    for (key, value, most) in [
        ("server.max_headers", &file.server.max_headers, PARSER_MAX_HEADERS),
        ("server.max_header_kb", &file.server.max_header_kb, PARSER_MAX_HEADER_KB),
    ] {
        if *value.get_ref() > most {
            let message = format!("{} is more than the {most} the HTTP parser reads", value.get_ref());
            return Err(main.invalid(value, key, message));
        }
    }
    let trusted_proxies = file
        .server
        .trusted_proxies
        .iter()
        .map(|net| net.get_ref().parse().map_err(|message| main.invalid(net, "server.trusted_proxies", message)))
        .collect::<Result<_, _>>()?;
    let server = ServerConfig {
        listen,
        threads: file.server.threads.max(1),
        shutdown_grace: Duration::from_secs(file.server.shutdown_grace_secs),
        tls: match &file.server.tls {
            None => None,
            Some(tls) => Some(TlsConfig {
                listen: socket_addr(&main, &tls.listen, "server.tls.listen")?,
                cert: existing_file(&main, &base, &tls.cert, "server.tls.cert")?,
                key: existing_file(&main, &base, &tls.key, "server.tls.key")?,
            }),
        },
        // A token (checked above) is a valid header value.
        via: http::HeaderValue::try_from(format!("1.1 {node_id}")).expect("a token makes a valid header value"),
        cdn_loop: http::HeaderValue::try_from(node_id.as_str()).expect("a token is a valid header value"),
        cache_status_bypass: http::HeaderValue::try_from(format!("{node_id}; fwd=bypass"))
            .expect("a token makes a valid header value"),
        node_id,
        request_limits: RequestLimits {
            max_uri_bytes: file.server.max_uri_bytes.max(64),
            max_headers: (*file.server.max_headers.get_ref()).max(8),
            max_header_bytes: (*file.server.max_header_kb.get_ref()).max(1) << 10,
            max_body_bytes: file.server.max_body_mb.max(1) << 20,
            body_timeout: Duration::from_secs(*file.server.body_timeout_secs.get_ref()),
        },
        trusted_proxies,
    };
    if let (Some(_), Some(token_file)) = (&file.admin.token_env, &file.admin.token_file) {
        let message = "set `token_env` or `token_file`, not both".into();
        return Err(main.invalid(token_file, "admin.token_file", message));
    }
    let admin = AdminConfig {
        listen: socket_addr(&main, &file.admin.listen, "admin.listen")?,
        token_env: file.admin.token_env.clone(),
        token_file: file.admin.token_file.as_ref().map(|f| base.join(f.get_ref())),
        max_body_bytes: (file.admin.max_upload_mb.max(1) << 20) as usize,
    };
    let keep_versions = match &file.modules.keep_versions {
        None => DEFAULT_KEEP_VERSIONS,
        Some(keep) if *keep.get_ref() >= 1 => *keep.get_ref(),
        Some(keep) => {
            let message = "must be at least 1: the active version is always kept".into();
            return Err(main.invalid(keep, "modules.keep_versions", message));
        }
    };
    let modules = ModulesConfig {
        dir: base.join(file.modules.dir.get_ref()),
        store: base.join(file.modules.store.as_deref().unwrap_or("../var/modules")),
        keep_versions,
    };
    let failure_status = match &file.limits.failure_status {
        None => Limits::default().failure_status,
        Some(status) => server_error(&main, status, "limits.failure_status")?,
    };
    let filter_memory_mb = &file.limits.filter_memory_mb;
    if *filter_memory_mb.get_ref() > MAX_FILTER_MEMORY_BYTES >> 20 {
        let message = format!(
            "{} is more than the {} a filter instance may have",
            filter_memory_mb.get_ref(),
            MAX_FILTER_MEMORY_BYTES >> 20
        );
        return Err(main.invalid(filter_memory_mb, "limits.filter_memory_mb", message));
    }
    let limits = Limits {
        filter_timeout: Duration::from_millis(file.limits.filter_timeout_ms.max(1)),
        filter_memory_bytes: (*filter_memory_mb.get_ref()).max(1) << 20,
        max_instances: file.limits.max_instances.max(1),
        idle_instance_timeout: Duration::from_secs(file.limits.idle_instance_timeout_secs.max(1)),
        failure_status,
        breaker: BreakerConfig::default().merged(&file.limits.breaker),
        output: OutputLimits::default().merged((
            file.limits.max_header_value_kb,
            file.limits.max_headers,
            file.limits.max_reply_body_kb,
        )),
    };
    let dns = DnsConfig {
        nameservers: file
            .dns
            .nameservers
            .iter()
            .map(|ns| socket_addr(&main, ns, "dns.nameservers"))
            .collect::<Result<_, _>>()?,
        refresh: Duration::from_secs(file.dns.refresh_secs),
    };
    let mut upstreams = std::collections::BTreeMap::new();
    for (name, section) in &file.upstreams {
        upstreams.insert(name.clone(), upstream(&main, &base, name, section, &dns, last_answer)?);
    }
    check_tiers(&main, &file.upstreams, &upstreams)?;
    let max_size_bytes = (file.cache.max_size_mb.max(1) << 20) as usize;
    let max_object_bytes = match &file.cache.max_object_mb {
        // One object may not push out more than an eighth of the cache.
        None => max_size_bytes / 8,
        Some(mb) if *mb.get_ref() > file.cache.max_size_mb => {
            let message = format!("{} is more than cache.max_size_mb ({})", mb.get_ref(), file.cache.max_size_mb);
            return Err(main.invalid(mb, "cache.max_object_mb", message));
        }
        Some(mb) => ((*mb.get_ref()).max(1) << 20) as usize,
    };
    let cache = CacheConfig {
        max_size_bytes,
        max_object_bytes,
        lock_timeout: Duration::from_millis(file.cache.lock_timeout_ms.max(1)),
    };

    let mut rate_limits = std::collections::BTreeMap::new();
    for (name, section) in &file.rate_limits {
        rate_limits.insert(name.clone(), rate_limit(&main, name, section)?);
    }
    let mut kv_stores = std::collections::BTreeMap::new();
    for (name, section) in &file.kv_stores {
        kv_stores.insert(name.clone(), kv_store(&main, &base, name, section)?);
    }
    let mut jwt_keysets = std::collections::BTreeMap::new();
    for (name, section) in &file.jwt.keysets {
        jwt_keysets.insert(name.clone(), keyset(&main, &base, name, section)?);
    }

    let mut routes = Vec::new();
    for pattern in &file.routes {
        let paths =
            expand_pattern(&base, pattern.get_ref()).map_err(|message| main.invalid(pattern, "routes", message))?;
        for route_path in paths {
            let source = Source::read(&route_path)?;
            let route_file: RouteFile = source.parse()?;
            for section in route_file.route {
                routes.push(route(&source, section, &upstreams, &limits, file.cache.enabled)?);
            }
        }
    }

    Ok(Config {
        path: path.to_path_buf(),
        server,
        admin,
        modules,
        limits,
        upstreams,
        routes,
        rate_limits,
        kv_stores,
        jwt_keysets,
        cache,
    })
}

/// The largest value a key-value store may hold: values are copied into a
/// filter's memory, which is a few MiB.
const MAX_KV_VALUE_BYTES: usize = 1 << 20;

fn kv_store(
    src: &Source,
    base: &Path,
    name: &str,
    section: &Spanned<file::KvStoreSection>,
) -> Result<KvStoreConfig, ConfigError> {
    let s = section.get_ref();
    let key = format!("kv_stores.{name}");
    // The admin API names a store in a path segment: `/kv/{store}/{key}`.
    if !crate::filters::module::valid_name(name) {
        let message = format!("store name {name:?} is not valid: use letters, digits, '-' and '_' (at most 64)");
        return Err(src.invalid(section, &key, message));
    }
    if s.max_keys == 0 || s.max_value_bytes == 0 {
        return Err(src.invalid(section, &key, "max_keys and max_value_bytes must be at least 1".into()));
    }
    if s.max_value_bytes > MAX_KV_VALUE_BYTES {
        let message = format!("max_value_bytes {} is more than {MAX_KV_VALUE_BYTES}", s.max_value_bytes);
        return Err(src.invalid(section, &key, message));
    }
    Ok(KvStoreConfig {
        name: name.to_string(),
        max_keys: s.max_keys,
        max_value_bytes: s.max_value_bytes,
        filters_may_write: s.filters_may_write,
        file: s.file.as_ref().map(|f| base.join(f)),
        at: src.at(section, &key),
    })
}

fn rate_limit(
    src: &Source,
    name: &str,
    section: &Spanned<file::RateLimitSection>,
) -> Result<RateLimitPolicyConfig, ConfigError> {
    let s = section.get_ref();
    let burst = s.burst.unwrap_or(s.rate);
    if s.rate == 0 || burst == 0 {
        let key = format!("rate_limits.{name}");
        return Err(src.invalid(section, &key, "rate and burst must be at least 1".into()));
    }
    let period = match s.per {
        file::RatePeriod::Second => Duration::from_secs(1),
        file::RatePeriod::Minute => Duration::from_secs(60),
        file::RatePeriod::Hour => Duration::from_secs(3600),
    };
    let interval = period / s.rate;
    // Past this, the window (the time a spent burst takes to refill) means
    // nothing to an edge that forgets its buckets at a restart, and far past
    // it the limiter's nanosecond arithmetic overflows.
    let refill_days = interval.as_secs_f64() * f64::from(burst) / 86_400.0;
    if refill_days > MAX_RATE_LIMIT_WINDOW_DAYS {
        let key = format!("rate_limits.{name}");
        let message = format!(
            "a burst of {burst} takes {refill_days:.0} days to refill at this rate; at most {MAX_RATE_LIMIT_WINDOW_DAYS}"
        );
        return Err(src.invalid(section, &key, message));
    }
    Ok(RateLimitPolicyConfig { name: name.to_string(), burst, interval, max_keys: s.max_keys.max(1) })
}

/// The longest a rate-limit policy's burst may take to refill.
const MAX_RATE_LIMIT_WINDOW_DAYS: f64 = 366.0;

/// What in route prefix `prefix` (already in normal form) a request may
/// spell two ways that route apart, if anything.
fn two_spellings(prefix: &str) -> Option<String> {
    let mut rest = prefix;
    while let Some(c) = rest.chars().next() {
        match c {
            '%' => {
                // Normal form: two hex digits, of a byte that is not
                // unreserved. One a request target cannot hold as it is (a
                // space, `%`, `#`, `?`, a control byte) has one spelling.
                let byte = u8::from_str_radix(rest.get(1..3)?, 16).ok()?;
                if byte.is_ascii_graphic() && !b"%#?".contains(&byte) {
                    return Some(format!("%{byte:02X}, which requests may also send as {:?}", byte as char));
                }
                rest = &rest[3..];
                continue;
            }
            c if !c.is_ascii() => {
                let encoded: String = c.to_string().bytes().map(|b| format!("%{b:02X}")).collect();
                return Some(format!("{c:?}, which requests send as {encoded} (write that)"));
            }
            c if !(c.is_ascii_alphanumeric() || "-._~/".contains(c)) => {
                return Some(format!("{c:?}, which requests may also send as %{:02X}", c as u32));
            }
            _ => {}
        }
        rest = &rest[c.len_utf8()..];
    }
    None
}

/// The most clock skew a keyset may allow: an hour.
const MAX_LEEWAY_SECS: u64 = 3600;

fn keyset(
    src: &Source,
    base: &Path,
    name: &str,
    section: &Spanned<file::KeysetSection>,
) -> Result<KeysetConfig, ConfigError> {
    let s = section.get_ref();
    let secret = match (&s.secret_env, &s.secret_file) {
        (Some(_), Some(_)) => {
            let key = format!("jwt.keysets.{name}");
            return Err(src.invalid(section, &key, "set `secret_env` or `secret_file`, not both".into()));
        }
        (Some(var), None) => Some(SecretSource::Env(var.clone())),
        (None, Some(file)) => Some(SecretSource::File(base.join(file))),
        (None, None) => None,
    };
    // Clock skew is seconds to minutes. A leeway past the Unix time itself
    // would wrap jsonwebtoken's `now - leeway`, and refuse every token.
    if s.leeway_secs > MAX_LEEWAY_SECS {
        let key = format!("jwt.keysets.{name}.leeway_secs");
        let message = format!("{} is more than the {MAX_LEEWAY_SECS} seconds allowed", s.leeway_secs);
        return Err(src.invalid(section, &key, message));
    }
    Ok(KeysetConfig {
        name: name.to_string(),
        algorithms: s.algorithms.clone(),
        secret,
        public_key_files: s.public_key_files.iter().map(|f| base.join(f)).collect(),
        jwks_file: s.jwks_file.as_ref().map(|f| base.join(f)),
        issuer: s.issuer.clone(),
        audience: s.audience.clone(),
        leeway: Duration::from_secs(s.leeway_secs),
        cache_size: s.cache_size,
        at: src.at(section, &format!("jwt.keysets.{name}")),
    })
}

fn socket_addr(src: &Source, value: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
    value
        .get_ref()
        .parse()
        .map_err(|_| src.invalid(value, key, format!("{:?} is not an address like 127.0.0.1:8080", value.get_ref())))
}

/// `host:port` split, the host unbracketed (`[::1]:80` and `::1:80` are
/// both `::1`, port 80).
fn host_port(server: &str) -> Option<(String, u16)> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Some((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = server.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?)).filter(|(host, _)| !host.is_empty())
}

fn existing_file(src: &Source, base: &Path, value: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
    let path = base.join(value.get_ref());
    if path.is_file() { Ok(path) } else { Err(src.invalid(value, key, format!("no file at {}", path.display()))) }
}

/// `cascade-<hostname>-<port>`: unique per node, so that two Cascades in a
/// cascade (PoP and regional) never mistake each other for a loop.
fn default_node_id(port: u16) -> String {
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host.trim().bytes().map(|b| if normalize::is_unreserved(b) { b as char } else { '-' }).collect();
    match host.is_empty() {
        true => format!("cascade-{port}"),
        false => format!("cascade-{host}-{port}"),
    }
}

/// A configured failure status: it must be a 5xx.
fn server_error(src: &Source, status: &Spanned<u16>, key: &str) -> Result<u16, ConfigError> {
    match *status.get_ref() {
        code @ 500..=599 => Ok(code),
        code => Err(src.invalid(status, key, format!("{code} is not a 5xx status"))),
    }
}

fn upstream(
    src: &Source,
    base: &Path,
    name: &str,
    section: &Spanned<UpstreamSection>,
    dns: &DnsConfig,
    last_answer: LastAnswer,
) -> Result<UpstreamConfig, ConfigError> {
    let s = section.get_ref();
    let key = format!("upstreams.{name}.servers");
    if s.servers.is_empty() == s.tiers.is_empty() {
        let message = "an upstream group needs either `servers` or `tiers`, not both".into();
        return Err(src.invalid(section, &format!("upstreams.{name}"), message));
    }
    // A name stands for every address it resolves to, as in nginx.
    let (mut fixed, mut names): (Vec<SocketAddr>, Vec<NamedServer>) = (Vec::new(), Vec::new());
    for server in &s.servers {
        let (host, port) = host_port(server.get_ref())
            .ok_or_else(|| src.invalid(server, &key, format!("{:?} is not a host:port", server.get_ref())))?;
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            let addr = SocketAddr::new(ip, port);
            if !fixed.contains(&addr) {
                fixed.push(addr);
            }
        } else if !names.iter().any(|n| n.host == host && n.port == port) {
            let addrs = match crate::upstream::dns::resolve(&host, port, &dns.nameservers) {
                Ok(addrs) => addrs,
                Err(message) => match last_answer(&host, port) {
                    Some(addrs) => {
                        log::warn!("{key}: {message}; keeping the addresses it had: {addrs:?}");
                        addrs
                    }
                    None => return Err(src.invalid(server, &key, message)),
                },
            };
            names.push(NamedServer { host, port, addrs });
        }
    }
    let server_names = ServerNames { names, fixed, dns: dns.clone() };
    let servers = server_names.servers();
    let names = (!server_names.names.is_empty() && !dns.refresh.is_zero()).then_some(server_names);
    // Keys a group reads only from its own servers: on a group of tiers
    // they would be silently ignored (each tier group has its own).
    if !s.tiers.is_empty() {
        let server_keys = [
            ("balance", s.balance != file::Balance::default()),
            ("connect_timeout_ms", s.connect_timeout_ms != file::default_connect_timeout_ms()),
            ("read_timeout_ms", s.read_timeout_ms != file::default_read_timeout_ms()),
            ("fail_timeout_ms", s.fail_timeout_ms != file::default_fail_timeout_ms()),
            ("tls", s.tls),
            ("sni", s.sni.is_some()),
            ("ca_file", s.ca_file.is_some()),
            ("failover_on", s.failover_on != file::default_failover_statuses()),
            ("health_check", s.health_check.is_some()),
        ];
        if let Some((key, _)) = server_keys.iter().find(|(_, set)| *set) {
            let message = format!("`{key}` applies to a group of servers; set it on the tier groups instead");
            return Err(src.invalid(section, &format!("upstreams.{name}.{key}"), message));
        }
    }
    for (key, millis) in [("connect_timeout_ms", s.connect_timeout_ms), ("read_timeout_ms", s.read_timeout_ms)] {
        if millis == 0 {
            return Err(src.invalid(section, &format!("upstreams.{name}.{key}"), "must be at least 1".into()));
        }
    }
    if !s.tls && (s.sni.is_some() || s.ca_file.is_some()) {
        let message = "`sni` and `ca_file` need `tls = true`".into();
        return Err(src.invalid(section, &format!("upstreams.{name}.tls"), message));
    }
    if let Some(host) = s.health_check.as_ref().and_then(|h| h.host.as_ref())
        && !normalize::valid_host(host.get_ref())
    {
        let message = format!("{:?} is not a host name or address, with an optional port", host.get_ref());
        return Err(src.invalid(host, &format!("upstreams.{name}.health_check.host"), message));
    }
    if let Some(status) = s.failover_on.iter().find(|s| !(500..600).contains(*s)) {
        let message = format!("{status} is not a 5xx status; only server errors fail over");
        return Err(src.invalid(section, &format!("upstreams.{name}.failover_on"), message));
    }
    let tls = match s.tls {
        false => None,
        true => {
            let host = s.servers.first().map(|h| h.get_ref().rsplit_once(':').map_or("", |(h, _)| h));
            let ca_der = match &s.ca_file {
                None => None,
                Some(file) => {
                    let at = format!("upstreams.{name}.ca_file");
                    let path = existing_file(src, base, file, &at)?;
                    let der =
                        pingora::tls::load_pem_file_ca(&path.display().to_string()).ok().filter(|d| !d.is_empty());
                    Some(der.ok_or_else(|| src.invalid(file, &at, "no PEM certificate in this file".into()))?)
                }
            };
            Some(UpstreamTls { sni: s.sni.clone().unwrap_or_else(|| host.unwrap_or_default().to_string()), ca_der })
        }
    };
    Ok(UpstreamConfig {
        name: name.to_string(),
        servers,
        tiers: s.tiers.iter().map(|t| t.get_ref().clone()).collect(),
        balance: s.balance,
        connect_timeout: Duration::from_millis(s.connect_timeout_ms),
        read_timeout: Duration::from_millis(s.read_timeout_ms),
        fail_timeout: Duration::from_millis(s.fail_timeout_ms),
        tls,
        failover_statuses: s.failover_on.clone(),
        max_attempts: s.max_attempts.unwrap_or(s.tiers.len().max(1)).max(1),
        names,
        health_check: s.health_check.as_ref().map(|h| HealthCheckConfig {
            path: h.path.clone(),
            host: h.host.as_ref().map(|host| host.get_ref().clone()),
            interval: Duration::from_millis(h.interval_ms.max(10)),
            timeout: Duration::from_millis(h.timeout_ms.max(1)),
            unhealthy_threshold: h.unhealthy_threshold.max(1),
            healthy_threshold: h.healthy_threshold.max(1),
        }),
    })
}

/// Each tier of a tiered group must be a group of servers.
fn check_tiers(
    src: &Source,
    sections: &std::collections::BTreeMap<String, Spanned<UpstreamSection>>,
    upstreams: &std::collections::BTreeMap<String, UpstreamConfig>,
) -> Result<(), ConfigError> {
    for (name, section) in sections {
        for tier in &section.get_ref().tiers {
            let key = format!("upstreams.{name}.tiers");
            match upstreams.get(tier.get_ref()) {
                None => return Err(src.invalid(tier, &key, format!("no upstream group named {:?}", tier.get_ref()))),
                Some(group) if !group.tiers.is_empty() => {
                    let message = format!("{:?} is itself tiered; a tier must list servers", tier.get_ref());
                    return Err(src.invalid(tier, &key, message));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

fn route(
    src: &Source,
    section: file::RouteSection,
    upstreams: &std::collections::BTreeMap<String, UpstreamConfig>,
    limits: &Limits,
    cache_by_default: bool,
) -> Result<RouteConfig, ConfigError> {
    let name = section.name.get_ref().clone();
    if name.is_empty() {
        return Err(src.invalid(&section.name, "route.name", "a route needs a name".into()));
    }
    let host = HostPattern::parse(section.host.get_ref())
        .map_err(|message| src.invalid(&section.host, "route.host", message))?;
    let prefix = section.path_prefix.get_ref();
    if !prefix.starts_with('/') {
        return Err(src.invalid(&section.path_prefix, "route.path_prefix", format!("{prefix:?} must start with '/'")));
    }
    // Requests are routed by their normalized path without `;` parameters:
    // a prefix in any other form would never match, and its traffic would go
    // to another route, without this route's filters.
    let routable = crate::route::normalize::path(prefix)
        .map(|normal| crate::route::normalize::without_parameters(&normal).into_owned())
        .map_err(|e| e.to_string());
    if routable.as_deref() != Ok(prefix.as_str()) || prefix.contains(['?', '#']) {
        let why = match routable {
            Ok(normal) if normal != *prefix => format!("requests are matched in the form {normal:?}"),
            Ok(_) => "a prefix is a path, without query or fragment".to_string(),
            Err(e) => e,
        };
        return Err(src.invalid(
            &section.path_prefix,
            "route.path_prefix",
            format!("{prefix:?} can never match a request: {why}"),
        ));
    }
    // A character a client may send as it is or percent-encoded (`!` or
    // `%21`) gives a request two forms, which route apart, while the origin
    // reads them alike: the form the prefix lacks would reach another route
    // without this one's filters. Past ASCII, only the encoded form is a
    // request's (`%C3%A9`, not `é`).
    if let Some(why) = two_spellings(prefix) {
        return Err(src.invalid(
            &section.path_prefix,
            "route.path_prefix",
            format!("{prefix:?} holds {why}: use letters, digits, '-', '.', '_', '~' and '/'"),
        ));
    }
    if !upstreams.contains_key(section.upstream.get_ref()) {
        return Err(src.invalid(
            &section.upstream,
            "route.upstream",
            format!(
                "route {name:?} names upstream group {:?}, which is not defined in [upstreams]",
                section.upstream.get_ref()
            ),
        ));
    }
    let mut filters = Vec::new();
    for entry in section.filters {
        if let Some(group) = entry.outbound.iter().find(|group| !upstreams.contains_key(group.get_ref())) {
            let message = format!("{:?} is not an upstream group defined in [upstreams]", group.get_ref());
            return Err(src.invalid(group, "route.filters.outbound", message));
        }
        let config_json = match &entry.config {
            Some(table) => serde_json::to_string(table.get_ref())
                .map_err(|e| src.invalid(table, "route.filters.config", format!("cannot convert to JSON: {e}")))?,
            None => "{}".to_string(),
        };
        filters.push(FilterEntry {
            module: entry.module.get_ref().clone(),
            on_error: match entry.on_error {
                file::OnErrorSetting::FailClosed => OnError::FailClosed,
                file::OnErrorSetting::FailOpen => OnError::FailOpen,
            },
            config_json: Arc::from(config_json),
            limits: FilterLimits {
                timeout: entry.timeout_ms.map(|ms| Duration::from_millis(ms.max(1))).unwrap_or(limits.filter_timeout),
                memory_bytes: match &entry.memory_mb {
                    None => limits.filter_memory_bytes,
                    // The engine's memory slots are sized by the global cap.
                    Some(mb) if *mb.get_ref() > limits.filter_memory_bytes >> 20 => {
                        let message = format!(
                            "{} is more than limits.filter_memory_mb ({}), which sizes every instance's memory: raise that",
                            mb.get_ref(),
                            limits.filter_memory_bytes >> 20
                        );
                        return Err(src.invalid(mb, "route.filters.memory_mb", message));
                    }
                    Some(mb) => (*mb.get_ref()).max(1) << 20,
                },
                failure_status: match &entry.failure_status {
                    None => limits.failure_status,
                    Some(status) => server_error(src, status, "route.filters.failure_status")?,
                },
                breaker: entry.breaker.as_ref().map_or(limits.breaker, |b| limits.breaker.merged(b)),
                output: limits.output.merged((entry.max_header_value_kb, entry.max_headers, entry.max_reply_body_kb)),
            },
            reuse_instances: entry.reuse_instances,
            outbound: entry.outbound.iter().map(|group| group.get_ref().clone()).collect(),
            at: src.at(&entry.module, "route.filters.module"),
        });
    }
    let key_headers = section
        .cache
        .key_headers
        .iter()
        .map(|name| {
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                src.invalid(&section.name, "route.cache.key_headers", format!("{name:?} is not a header name"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RouteConfig {
        at: src.at(&section.name, "route.name"),
        name,
        host,
        path_prefix: prefix.clone(),
        upstream: section.upstream.get_ref().clone(),
        filters,
        cache: RouteCachePolicy {
            enabled: section.cache.enabled.unwrap_or(cache_by_default),
            ttl: section.cache.ttl_secs.map(Duration::from_secs),
            ignore_query: section.cache.ignore_query,
            ignore_query_params: section.cache.ignore_query_params,
            key_headers,
        },
    })
}

/// The files matching `pattern` (relative to `base`), sorted. `*` matches any
/// run of characters within the file name; directories are taken literally.
fn expand_pattern(base: &Path, pattern: &str) -> Result<Vec<PathBuf>, String> {
    let full = base.join(pattern);
    let name_pattern = full
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{pattern:?} does not name a file"))?
        .to_string();
    let dir = full.parent().unwrap_or(base);
    if dir.to_string_lossy().contains('*') {
        return Err(format!("{pattern:?}: `*` may only stand in the file name, not in a directory"));
    }
    if !name_pattern.contains('*') {
        // A route file named outright must exist; the error points here.
        return match full.is_file() {
            true => Ok(vec![full]),
            false => Err(format!("no route file at {}", full.display())),
        };
    }
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| wildcard_match(&name_pattern, n))
        })
        .collect();
    paths.sort();
    Ok(paths)
}

fn wildcard_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len()).filter(|&i| rest.is_char_boundary(i)).any(|i| wildcard_match(tail, &rest[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    const MAIN: &str = r#"
routes = ["routes/*.toml"]
[modules]
dir = "wasm"
[upstreams.origin]
servers = ["127.0.0.1:9000"]
"#;

    #[test]
    fn wildcard() {
        assert!(wildcard_match("*.toml", "a.toml"));
        assert!(wildcard_match("a*b*c", "aXbYc"));
        assert!(!wildcard_match("*.toml", "a.toml.bak"));
    }

    #[test]
    fn loads_routes_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "cascade.toml", MAIN);
        write(
            dir.path(),
            "routes/a.toml",
            "[[route]]\nname = \"a\"\nupstream = \"origin\"\n[[route.filters]]\nmodule = \"rewrite\"\nconfig = { strip_prefix = \"/api\" }\n",
        );
        let config = load(&main).unwrap();
        assert_eq!(config.routes.len(), 1);
        let route = &config.routes[0];
        assert_eq!(route.filters[0].config_json.as_ref(), r#"{"strip_prefix":"/api"}"#);
        assert_eq!(route.filters[0].on_error, OnError::FailClosed);
        assert_eq!(route.filters[0].at.line, 5);
        assert_eq!(config.modules.dir, dir.path().join("wasm"));
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "cascade.toml", MAIN);
        let routes =
            write(dir.path(), "routes/a.toml", "[[route]]\nname = \"a\"\nupstream = \"origin\"\nhots = \"x\"\n");
        let err = load(&main).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:4:", routes.display())), "{err}");
        assert!(err.contains("unknown field `hots`"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "cascade.toml", &format!("{MAIN}\n[limits]\nfilter_timeout_ms = \"fast\"\n"));
        let err = load(&main).unwrap_err().to_string();
        assert!(err.contains(":9:"), "{err}");
        assert!(err.contains("filter_timeout_ms"), "{err}");
    }

    #[test]
    fn a_bad_routes_pattern_points_at_the_main_file() {
        let dir = tempfile::tempdir().unwrap();
        for pattern in ["routes/*/toml", "routes/missing.toml"] {
            let main = write(dir.path(), "cascade.toml", &MAIN.replace("routes/*.toml", pattern));
            let err = load(&main).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{}:2: key `routes`", main.display())), "{err}");
        }
    }

    #[test]
    fn cache_key_headers_must_be_header_names() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "cascade.toml", MAIN);
        let route = "[[route]]\nname = \"a\"\nupstream = \"origin\"\n[route.cache]\nkey_headers = ";
        write(dir.path(), "routes/a.toml", &format!("{route}[\"X-AB-Variant\"]\n"));
        let config = load(&main).unwrap();
        assert_eq!(config.routes[0].cache.key_headers, vec![http::HeaderName::from_static("x-ab-variant")]);
        write(dir.path(), "routes/a.toml", &format!("{route}[\"bad header\"]\n"));
        let err = load(&main).unwrap_err().to_string();
        assert!(err.contains("a.toml:2: key `route.cache.key_headers`"), "{err}");
        assert!(err.contains("\"bad header\" is not a header name"), "{err}");
    }

    #[test]
    fn a_keyset_takes_one_secret_source() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "routes/a.toml", "[[route]]\nname = \"a\"\nupstream = \"origin\"\n");
        let keyset = "\n[jwt.keysets.k]\nalgorithms = [\"HS256\"]\nsecret_file = \"secret\"\n";
        let main = write(dir.path(), "cascade.toml", &format!("{MAIN}{keyset}"));
        let config = load(&main).unwrap();
        let secret = &config.jwt_keysets["k"].secret;
        assert!(matches!(secret, Some(SecretSource::File(path)) if *path == dir.path().join("secret")), "{secret:?}");

        let main = write(dir.path(), "cascade.toml", &format!("{MAIN}{keyset}secret_env = \"JWT_SECRET\"\n"));
        let err = load(&main).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}:8: key `jwt.keysets.k`", main.display())), "{err}");
        assert!(err.contains("not both"), "{err}");

        let main = write(dir.path(), "cascade.toml", &format!("{MAIN}{keyset}leeway_secs = 99999999999\n"));
        let err = load(&main).unwrap_err().to_string();
        assert!(err.contains("key `jwt.keysets.k.leeway_secs`: 99999999999 is more than the 3600"), "{err}");
    }

    #[test]
    fn a_path_prefix_must_be_in_the_form_requests_are_matched_in() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "cascade.toml", MAIN);
        let route =
            |prefix: &str| format!("[[route]]\nname = \"a\"\nupstream = \"origin\"\npath_prefix = {prefix:?}\n");
        for good in ["/", "/api", "/api/", "/caf%C3%A9", "/~user", "/My%20Files", "/docs/c%23", "/100%25", "/a%3Fb"] {
            write(dir.path(), "routes/a.toml", &route(good));
            assert_eq!(load(&main).unwrap().routes[0].path_prefix, good);
        }
        let never = "can never match a request: ";
        for (bad, why) in [
            ("/api//v1", format!("{never}requests are matched in the form \"/api/v1\"")),
            ("/a/../b", format!("{never}requests are matched in the form \"/b\"")),
            ("/%7Euser", format!("{never}requests are matched in the form \"/~user\"")),
            ("/caf%c3%a9", format!("{never}requests are matched in the form \"/caf%C3%A9\"")),
            ("/admin;x", format!("{never}requests are matched in the form \"/admin\"")),
            ("/a%2Fb", format!("{never}path holds an encoded '/'")),
            ("/x?y", format!("{never}a prefix is a path, without query")),
            // Two spellings that route apart: the one the prefix lacks would
            // reach another route without this one's filters.
            ("/a!b", "'!', which requests may also send as %21".into()),
            ("/a%21b", "%21, which requests may also send as '!'".into()),
            ("/café", "'é', which requests send as %C3%A9 (write that)".into()),
            ("/a:b", "':', which requests may also send as %3A".into()),
            ("/a%3Cb", "%3C, which requests may also send as '<'".into()),
        ] {
            write(dir.path(), "routes/a.toml", &route(bad));
            let err = load(&main).unwrap_err().to_string();
            assert!(err.contains("a.toml:4: key `route.path_prefix`"), "{bad}: {err}");
            assert!(err.contains(&why), "{bad}: {err}");
        }
    }

    #[test]
    fn upstream_keys_that_would_be_ignored_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "routes/a.toml", "[[route]]\nname = \"a\"\nupstream = \"origin\"\n");
        let tiered = "\n[upstreams.edge]\ntiers = [\"origin\"]\n";
        for (extra, key, why) in [
            (format!("{tiered}tls = true\n"), "upstreams.edge.tls", "set it on the tier groups"),
            (format!("{tiered}read_timeout_ms = 5\n"), "upstreams.edge.read_timeout_ms", "set it on the tier groups"),
            (format!("{tiered}[upstreams.edge.health_check]\n"), "upstreams.edge.health_check", "tier groups"),
            (
                "\n[upstreams.o2]\nservers = [\"127.0.0.1:1\"]\nconnect_timeout_ms = 0\n".into(),
                "o2.connect",
                "at least 1",
            ),
            ("\n[upstreams.o2]\nservers = [\"127.0.0.1:1\"]\nsni = \"a\"\n".into(), "upstreams.o2.tls", "need `tls"),
        ] {
            let main = write(dir.path(), "cascade.toml", &format!("{MAIN}{extra}"));
            let err = load(&main).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(why), "{extra}: {err}");
        }
        let main = write(dir.path(), "cascade.toml", &format!("{MAIN}{tiered}max_attempts = 2\n"));
        assert!(load(&main).is_ok());
    }

    #[test]
    fn server_names_resolve_to_every_address_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "routes/a.toml", "[[route]]\nname = \"a\"\nupstream = \"o2\"\n");
        // A nameserver that answers nothing: the name fails where it is written.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent = silent.local_addr().unwrap();
        for (extra, at, why) in [
            ("[dns]\nnameservers = [\"resolver\"]\n".to_string(), "key `dns.nameservers`", "is not an address"),
            (
                format!("[upstreams.o2]\nservers = [\"o.test:80\"]\n[dns]\nnameservers = [\"{silent}\"]\n"),
                "key `upstreams.o2.servers`",
                "nameserver",
            ),
            ("[upstreams.o2]\nservers = [\"o.test\"]\n".to_string(), "key `upstreams.o2.servers`", "not a host:port"),
        ] {
            let main = write(dir.path(), "cascade.toml", &format!("{MAIN}\n{extra}"));
            let err = load(&main).unwrap_err().to_string();
            assert!(err.contains(at) && err.contains(why), "{extra}: {err}");
        }
        // Addresses as given, a name's after them without repeats; names
        // are resolved again only with a refresh interval.
        let servers = "[upstreams.o2]\nservers = [\"127.0.0.1:80\", \"127.0.0.1:80\", \"localhost:80\"]\n";
        let main = write(dir.path(), "cascade.toml", &format!("{MAIN}\n{servers}"));
        let config = load(&main).unwrap();
        let o2 = &config.upstreams["o2"];
        assert_eq!(o2.servers[0], "127.0.0.1:80".parse().unwrap());
        assert_eq!(o2.servers.iter().filter(|a| **a == o2.servers[0]).count(), 1, "{:?}", o2.servers);
        let names = o2.names.as_ref().unwrap();
        assert_eq!((names.names[0].host.as_str(), names.names[0].port, names.fixed.len()), ("localhost", 80, 1));
        let main = write(dir.path(), "cascade.toml", &format!("{MAIN}\n{servers}[dns]\nrefresh_secs = 0\n"));
        assert_eq!(load(&main).unwrap().upstreams["o2"].names, None);
    }

    #[test]
    fn limits_past_the_parser_bad_address_blocks_and_two_token_sources_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "routes/a.toml", "[[route]]\nname = \"a\"\nupstream = \"origin\"\n");
        for (extra, why) in [
            ("\n[server]\nmax_headers = 1000\n", "key `server.max_headers`: 1000 is more than the 256"),
            ("\n[server]\nmax_header_kb = 2048\n", "key `server.max_header_kb`: 2048 is more than the 1023"),
            ("\n[server]\nbody_timeout_secs = 0\n", "key `server.body_timeout_secs`: must be at least 1"),
            ("\n[admin]\ntoken_env = \"T\"\ntoken_file = \"t\"\n", "key `admin.token_file`: set `token_env` or"),
            (
                "\n[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
                "key `server.trusted_proxies`: \"10.0.0.0/33\": the prefix length must be 0 to 32",
            ),
            (
                "\n[limits]\nfilter_memory_mb = 512\n",
                "key `limits.filter_memory_mb`: 512 is more than the 256 a filter",
            ),
            (
                "\n[server]\ntrusted_proxies = [\"lb.internal\"]\n",
                "key `server.trusted_proxies`: \"lb.internal\" is not an IP address or block",
            ),
            (
                "\n[rate_limits.huge]\nrate = 1\nper = \"hour\"\nburst = 6000000\n",
                "key `rate_limits.huge`: a burst of 6000000 takes 250000 days to refill at this rate; at most 366",
            ),
            (
                "\n[kv_stores.\"deny list\"]\n",
                "key `kv_stores.deny list`: store name \"deny list\" is not valid: use letters, digits",
            ),
            ("\n[kv_stores.flags]\nmax_keys = 0\n", "key `kv_stores.flags`: max_keys and max_value_bytes must be"),
            ("\n[kv_stores.blobs]\nmax_value_bytes = 2000000\n", "max_value_bytes 2000000 is more than 1048576"),
        ] {
            let main = write(dir.path(), "cascade.toml", &format!("{MAIN}{extra}"));
            let err = load(&main).unwrap_err().to_string();
            assert!(err.contains(why), "{extra}: {err}");
        }
    }

    #[test]
    fn the_store_must_keep_the_active_version() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "routes/a.toml", "[[route]]\nname = \"a\"\nupstream = \"origin\"\n");
        let main = write(dir.path(), "cascade.toml", &MAIN.replace("[modules]\n", "[modules]\nkeep_versions = 0\n"));
        let err = load(&main).unwrap_err().to_string();
        assert!(err.contains("cascade.toml:4: key `modules.keep_versions`: must be at least 1"), "{err}");
        let main = write(dir.path(), "cascade.toml", &MAIN.replace("[modules]\n", "[modules]\nkeep_versions = 1\n"));
        assert_eq!(load(&main).unwrap().modules.keep_versions, 1);
        let main = write(dir.path(), "cascade.toml", MAIN);
        assert_eq!(load(&main).unwrap().modules.keep_versions, DEFAULT_KEEP_VERSIONS);
    }

    #[test]
    fn an_entry_cannot_have_more_memory_than_the_engine_gives_each_instance() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "cascade.toml", &format!("{MAIN}\n[limits]\nfilter_memory_mb = 32\n"));
        let entry = |mb: u64| {
            format!(
                "[[route]]\nname = \"a\"\nupstream = \"origin\"\n[[route.filters]]\nmodule = \"m\"\nmemory_mb = {mb}\n"
            )
        };
        write(dir.path(), "routes/a.toml", &entry(32));
        assert!(load(&main).is_ok());
        write(dir.path(), "routes/a.toml", &entry(64));
        let err = load(&main).unwrap_err().to_string();
        assert!(
            err.contains("a.toml:6: key `route.filters.memory_mb`: 64 is more than limits.filter_memory_mb (32)"),
            "{err}"
        );
    }

    #[test]
    fn missing_upstream_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let main = write(dir.path(), "cascade.toml", MAIN);
        write(dir.path(), "routes/a.toml", "[[route]]\nname = \"a\"\n\nupstream = \"nope\"\n");
        let err = load(&main).unwrap_err().to_string();
        assert!(err.contains("a.toml:4: key `route.upstream`"), "{err}");
        assert!(err.contains("\"nope\""), "{err}");
    }
}
