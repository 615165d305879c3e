//! The admin API, on its own listener (loopback by default).
//!
//! | Endpoint | Purpose |
//! |---|---|
//! | `GET /healthz` | liveness; the only endpoint without a token |
//! | `GET /modules`, `GET /modules/{name}` | versions, sha256, size, compile time, active version, routes using it |
//! | `PUT /modules/{name}` | body: component bytes; validated, compiled, activated |
//! | `POST /modules/{name}/rollback` | back to the previously active version |
//! | `DELETE /modules/{name}` | refused (409) while a route uses the module; a modules-directory file stays unloaded |
//! | `GET /routes` | routes and their chains |
//! | `POST /config/reload` | reload the config files; a broken config gets a 400 |
//! | `GET /metrics` | Prometheus text |
//! | `GET /kv`, `GET /kv/{store}?prefix=&limit=` | the key-value stores; a store's keys, with their sizes and TTLs |
//! | `GET`, `PUT`, `DELETE /kv/{store}/{key}` | one key: the body of a `PUT` is its value (UTF-8), `?ttl_secs=N` makes it expire |
//!
//! Every other endpoint needs `Authorization: Bearer <token>`, compared by
//! SHA-256 digest (timing tells nothing of the token). Errors are JSON: `{"error": "...", "status": N}`.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{Value, json};

use crate::config::{AdminConfig, SecretSource};
use crate::control::ControlPlane;
use crate::filters::capabilities::jwt::read_secret;
use crate::filters::capabilities::kv::KvError;
use crate::filters::module::valid_name;
use crate::route::normalize::percent_decode;

/// The admin API service. Its token is the control plane's
/// (`ControlPlane::admin_token`), which a config reload reads again.
pub struct AdminApi {
    control: Arc<ControlPlane>,
    max_body_bytes: usize,
}

/// The admin token `admin` names, or why there is none.
pub fn read_token(admin: &AdminConfig) -> Result<Vec<u8>, String> {
    let source = match (&admin.token_env, &admin.token_file) {
        (Some(var), _) => SecretSource::Env(var.clone()),
        (None, Some(file)) => SecretSource::File(file.clone()),
        (None, None) => return Err("no admin.token_env or admin.token_file is configured".into()),
    };
    let token = read_secret(&source)?;
    if token.is_empty() {
        return Err("the admin token is empty".into());
    }
    Ok(token)
}

/// Whether two tokens are equal, compared by their SHA-256 digests: how long
/// the comparison takes tells a guesser nothing about the token, not even
/// its length.
fn tokens_match(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    Sha256::digest(a) == Sha256::digest(b)
}

fn reply(status: u16, body: Value) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string().into_bytes())
        .expect("a valid response")
}

fn error(status: u16, message: impl Into<String>) -> Response<Vec<u8>> {
    reply(status, json!({ "error": message.into(), "status": status }))
}

impl AdminApi {
    /// The admin API over `control`, which holds its token.
    pub fn new(control: Arc<ControlPlane>, max_body_bytes: usize) -> Self {
        Self { control, max_body_bytes }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let presented = session
            .req_header()
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            // The scheme is case-insensitive (RFC 9110 §11.1).
            .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_matches(' ')))
            .unwrap_or("");
        self.control.admin_token().is_some_and(|token| tokens_match(presented.as_bytes(), &token))
    }

    /// Read and drop what is left of the request body (up to the body limit),
    /// so that an early answer (401, 400, 404) reaches a client that is
    /// still sending, instead of a reset connection. A body declared larger
    /// than the limit is not read at all.
    async fn discard_body(&self, session: &mut ServerSession) {
        if self.declared_length(session).is_some_and(|n| n > self.max_body_bytes) {
            return;
        }
        let mut seen = 0;
        while !session.is_body_done() {
            match session.read_request_body().await {
                Ok(Some(chunk)) if seen + chunk.len() <= self.max_body_bytes => seen += chunk.len(),
                _ => return,
            }
        }
    }

    fn declared_length(&self, session: &ServerSession) -> Option<usize> {
        session.req_header().headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
    }

    /// The request body, or the error answer when it is too large.
    async fn body(&self, session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
        let too_large = || error(413, format!("body larger than {} bytes", self.max_body_bytes));
        if self.declared_length(session).is_some_and(|n| n > self.max_body_bytes) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_body_bytes {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => return Err(error(400, format!("cannot read the body: {e}"))),
            }
        }
    }

    async fn route(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.as_str().to_string();
        let path = session.req_header().uri.path().to_string();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if method == "GET" && segments == ["healthz"] {
            return reply(200, json!({ "status": "ok" }));
        }
        if !self.authorized(session) {
            return error(401, "missing or wrong bearer token");
        }
        let control = &self.control;
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["modules"]) => reply(200, control.modules_json()),
            ("GET", ["routes"]) => reply(200, control.routes_json()),
            ("GET", ["metrics"]) => Response::builder()
                .status(200)
                .header("content-type", "text/plain; version=0.0.4")
                .body(control.render_metrics().into_bytes())
                .expect("a valid response"),
            ("POST", ["config", "reload"]) => match control.reload().await {
                Ok(restart_needed) => reply(
                    200,
                    json!({ "reloaded": true, "restart_needed": restart_needed, "routes": control.routes_json() }),
                ),
                Err(e) => error(e.status(), e.to_string()),
            },
            ("POST", ["cache", "purge"]) => {
                let body = match self.body(session).await {
                    Ok(body) => body,
                    Err(response) => return response,
                };
                match serde_json::from_slice::<PurgeRequest>(&body) {
                    Ok(PurgeRequest { url: Some(url), prefix: None }) => {
                        reply(200, json!({ "purged": control.cache.purge(&url, false).await, "url": url }))
                    }
                    Ok(PurgeRequest { url: None, prefix: Some(prefix) }) if !prefix.is_empty() => {
                        reply(200, json!({ "purged": control.cache.purge(&prefix, true).await, "prefix": prefix }))
                    }
                    Ok(_) => error(400, "give exactly one of \"url\" or a non-empty \"prefix\""),
                    Err(e) => error(400, format!("the body must be JSON like {{\"url\": \"http://host/path\"}}: {e}")),
                }
            }
            (_, ["kv", ..]) => {
                let query = session.req_header().uri.query().unwrap_or("").to_string();
                let body = match method.as_str() {
                    "PUT" => match self.body(session).await {
                        Ok(body) => body,
                        Err(response) => return response,
                    },
                    _ => Vec::new(),
                };
                kv(control, &method, &segments[1..], &query, body)
            }
            (_, ["modules", name, ..]) if !valid_name(name) => {
                error(400, format!("module name {name:?} is not valid: use letters, digits, '-' and '_'"))
            }
            ("GET", ["modules", name]) => match control.module_json(name) {
                Some(module) => reply(200, module),
                None => error(404, format!("no module named {name:?}")),
            },
            ("PUT", ["modules", name]) => {
                let name = name.to_string();
                let body = match self.body(session).await {
                    Ok(body) => body,
                    Err(response) => return response,
                };
                match control.upload(&name, &body).await {
                    Ok(module) => reply(200, module),
                    Err(e) => error(e.status(), e.to_string()),
                }
            }
            ("POST", ["modules", name, "rollback"]) => match control.rollback(name).await {
                Ok(module) => reply(200, module),
                Err(e) => error(e.status(), e.to_string()),
            },
            ("DELETE", ["modules", name]) => match control.delete(name).await {
                Ok(()) => reply(200, json!({ "deleted": name })),
                Err(e) => error(e.status(), e.to_string()),
            },
            _ => error(404, format!("no endpoint {method} {path}")),
        }
    }
}

/// The most keys one listing gives, unless `limit` says fewer.
const MAX_KV_LISTING: usize = 1_000;

/// `/kv/...`: `path` is what follows `/kv/`, split at `/`; a key may hold
/// `/` and is percent-decoded.
fn kv(control: &ControlPlane, method: &str, path: &[&str], query: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let current = control.current.load();
    let stores = &current.caps.kv_stores;
    let ttl_ms = |ttl: Option<std::time::Duration>| ttl.map(|ttl| ttl.as_millis() as u64);
    let (store_name, key) = match path {
        [] | [""] if method == "GET" => {
            let listed: Vec<Value> = stores
                .iter()
                .map(|s| {
                    json!({
                        "name": s.config.name,
                        "keys": s.len(),
                        "max_keys": s.config.max_keys,
                        "max_value_bytes": s.config.max_value_bytes,
                        "filters_may_write": s.config.filters_may_write,
                    })
                })
                .collect();
            return reply(200, json!({ "stores": listed }));
        }
        [] | [""] => return error(405, format!("{method} /kv: only GET lists the stores")),
        [store] => (*store, None),
        [store, key @ ..] => match percent_decode(&key.join("/")) {
            Some(key) => (*store, Some(key)),
            None => return error(400, "the key is not valid percent-encoded UTF-8"),
        },
    };
    let store = match stores.store(store_name) {
        Ok(store) => store,
        Err(e) => return error(404, e.to_string()),
    };
    let kv_error = |e: KvError| error(400, format!("key-value store {store_name:?}: {e}"));
    let no_key = |key: &str| error(404, format!("key-value store {store_name:?} has no key {key:?}"));
    // The change is made and serves; the flusher tries the file again.
    let not_saved = |e: std::io::Error| error(500, format!("changed in memory, but not saved: {e}"));
    match (method, key) {
        ("GET", None) => {
            let prefix = query_param(query, "prefix").unwrap_or_default();
            let limit = match query_param(query, "limit").map(|l| l.parse::<usize>()) {
                None => MAX_KV_LISTING,
                Some(Ok(limit)) => limit.min(MAX_KV_LISTING),
                Some(Err(_)) => return error(400, "limit must be a whole number"),
            };
            let (keys, more) = store.keys(&prefix, limit);
            let keys: Vec<Value> = keys
                .into_iter()
                .map(|k| json!({ "key": k.key, "value_bytes": k.value_bytes, "ttl_ms": ttl_ms(k.ttl) }))
                .collect();
            reply(200, json!({ "store": store_name, "keys": keys, "more": more }))
        }
        ("GET", Some(key)) => match store.entry(&key) {
            Ok(Some((value, ttl))) => reply(200, json!({ "key": key, "value": value, "ttl_ms": ttl_ms(ttl) })),
            Ok(None) => no_key(&key),
            Err(e) => kv_error(e),
        },
        ("PUT", Some(key)) => {
            let Ok(value) = String::from_utf8(body) else {
                return error(400, "the value must be UTF-8 text");
            };
            let ttl = match query_param(query, "ttl_secs").map(|t| t.parse::<u64>()) {
                None => None,
                Some(Ok(secs)) if secs > 0 => Some(std::time::Duration::from_secs(secs)),
                Some(_) => return error(400, "ttl_secs must be a whole number of seconds, at least 1"),
            };
            match store.set(&key, value, ttl).map(|()| store.save()) {
                Ok(Ok(())) => reply(200, json!({ "store": store_name, "key": key, "ttl_ms": ttl_ms(ttl) })),
                Ok(Err(e)) => not_saved(e),
                Err(e @ KvError::StoreFull(_)) => error(507, e.to_string()),
                Err(e) => kv_error(e),
            }
        }
        ("DELETE", Some(key)) => match store.delete(&key) {
            Ok(true) => match store.save() {
                Ok(()) => reply(200, json!({ "store": store_name, "deleted": key })),
                Err(e) => not_saved(e),
            },
            Ok(false) => no_key(&key),
            Err(e) => kv_error(e),
        },
        (method, _) => error(405, format!("{method} is not allowed here: GET a store, GET, PUT or DELETE a key")),
    }
}

/// The percent-decoded value of `name` in a query string.
fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| percent_decode(v))
}

/// `POST /cache/purge`: `{"url": "host/path?query"}` for one URL (every
/// `Vary` variant), or `{"prefix": "host/static/"}` for all under it. An
/// `http://` or `https://` scheme is ignored.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    url: Option<String>,
    prefix: Option<String>,
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let _in_flight = crate::drain::InFlight::admin_call();
        let response = self.route(session).await;
        self.discard_body(session).await;
        response
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        use crate::route::normalize::percent_decode;
        assert_eq!(percent_decode("jti%3Aabc%2F1"), Some("jti:abc/1".into()));
        assert_eq!(percent_decode("%C3%A9"), Some("é".into()));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%+F"), None, "two hex digits, no sign");
        assert_eq!(percent_decode("%FF"), None, "not UTF-8");
        assert_eq!(super::query_param("a=1&ttl_secs=30", "ttl_secs"), Some("30".into()));
        assert_eq!(super::query_param("prefix=sub%3A", "prefix"), Some("sub:".into()));
        assert_eq!(super::query_param("", "limit"), None);
    }

    #[test]
    fn tokens_match() {
        assert!(super::tokens_match(b"secret", b"secret"));
        assert!(!super::tokens_match(b"secret", b"secreT"));
        assert!(!super::tokens_match(b"secret", b"secret2"));
    }
}
