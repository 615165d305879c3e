//! The edge cache: RFC 9111 caching on Pingora's HTTP cache state machine.
//!
//! Pingora drives lookups, conditional revalidation (304 handling), request
//! collapsing (the cache lock), `stale-while-revalidate` and
//! `stale-if-error`, and the `Age` header. This module supplies the policy:
//! the cache key, what may be stored and for how long, `Vary`, the
//! `Cache-Status` member (RFC 9211) and purging. Storage is bounded by an LRU
//! eviction manager sized from `[cache] max_size_mb`.

mod store;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use pingora::cache::VarianceBuilder;
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::eviction::EvictionManager;
use pingora::cache::eviction::simple_lru;
use pingora::cache::filters::{calculate_fresh_until, calculate_serve_stale_durations, request_cacheable};
use pingora::cache::key::HashBinary;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::Predictor;
use pingora::cache::{CacheKey, CacheMeta, CacheMetaDefaults, CachePhase, HttpCache, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::common::header_value_content_length;

use crate::config::{CacheConfig, RouteCachePolicy, ServerConfig};
use crate::service::headers::joined_lines;
use store::{EdgeStorage, URL_END};

/// Without explicit freshness (`s-maxage`, `max-age` or `Expires`) nothing
/// is stored: caching a dynamic response nobody marked cacheable is the
/// classic CDN footgun. A route's `ttl_secs` is the way to cache those.
const ORIGIN_HEADERS_ONLY: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

/// For a route with `ttl_secs`: every response has some freshness, so
/// Pingora's answer says only whether storing is allowed at all.
const ANY_STORABLE: CacheMetaDefaults = CacheMetaDefaults::new(|_| Some(std::time::Duration::ZERO), 0, 0);

/// Statuses a cache may store by default (RFC 9110, section 15.1).
fn heuristically_cacheable(status: u16) -> bool {
    matches!(status, 200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// The process-wide cache. Pingora wants `'static` parts, and the cache
/// outlives every config reload, so it is created once and never freed.
pub struct EdgeCache {
    storage: &'static EdgeStorage,
    eviction: &'static simple_lru::Manager,
    lock: &'static CacheKeyLockImpl,
    /// Keys whose last response could not be stored (the 16,384 most recent).
    /// They skip the cache lock, so concurrent requests for a dynamic URL are
    /// not serialized behind one another; a storable answer takes the key off
    /// the list. (Its tables are allocated up front: more keys, more memory.)
    predictor: &'static Predictor<16>,
    /// The largest body an entry may hold (`cache.max_object_mb`).
    max_object_bytes: usize,
}

impl EdgeCache {
    pub fn new(config: &CacheConfig) -> &'static Self {
        let lock: &'static CacheLock = Box::leak(Box::new(CacheLock::new(config.lock_timeout)));
        Box::leak(Box::new(Self {
            storage: Box::leak(Box::default()),
            max_object_bytes: config.max_object_bytes,
            eviction: Box::leak(Box::new(simple_lru::Manager::new(config.max_size_bytes))),
            lock,
            predictor: Box::leak(Box::new(Predictor::new(1_024, None))),
        }))
    }

    /// Turn the cache on for this request.
    pub fn enable(&'static self, cache: &mut HttpCache) {
        cache.enable(self.storage, Some(self.eviction), Some(self.predictor), Some(self.lock), None);
        // Pingora refuses a response whose length says more, and stops
        // storing (not serving) one that grows past it, remembering either
        // as uncacheable so later requests do not queue on the cache lock.
        cache.set_max_file_size_bytes(self.max_object_bytes);
    }

    /// Drop the entries cached for `url` (every `Vary` variant), or for every
    /// URL that starts with it. Returns how many entries went.
    pub async fn purge(&self, url: &str, prefix: bool) -> usize {
        let url = purge_url(url);
        self.storage.cancel_fills(&url, prefix);
        let mut purged = 0;
        for key in self.storage.keys_for(&url, prefix) {
            self.eviction.remove((&store::entry(key.clone())).into());
            if self.storage.remove(&key) {
                purged += 1;
            }
        }
        purged
    }

    /// The cache key for a request starting now (see `cache_key`).
    pub fn key(&self, client_url: &str, proto: &str, upstream: &str, upstream_target: &str, headers: &str) -> CacheKey {
        let mut key = cache_key(client_url, proto, upstream, upstream_target, headers);
        key.extensions.insert(self.storage.purges_seen());
        key
    }

    /// Whether a response says (by `Content-Length`) it is longer than an
    /// entry may be. Refused here as uncacheable, it keeps range requests
    /// working: Pingora's own size check (which catches a body that grows
    /// past the cap) turns ranges off for the response, so a seek in a large
    /// video got the whole file.
    pub fn too_large(&self, resp: &ResponseHeader) -> bool {
        header_value_content_length(resp.headers.get(http::header::CONTENT_LENGTH))
            .is_some_and(|length| length > self.max_object_bytes)
    }

    pub fn size_bytes(&self) -> usize {
        self.eviction.total_size()
    }

    pub fn entries(&self) -> usize {
        self.eviction.total_items()
    }

    pub fn evictions(&self) -> u64 {
        self.storage.evictions()
    }
}

/// `http://Host:80/path` and `host/path` name the same entries: the scheme
/// goes, and the host is normalized as routing (and the cache key) have it.
fn purge_url(url: &str) -> String {
    let bare = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).unwrap_or(url);
    let (host, path) = bare.split_at(bare.find('/').unwrap_or(bare.len()));
    format!("{}{path}", crate::route::normalize::host(host))
}

/// `path?query` with the query parameters the policy ignores left out.
pub fn key_target<'a>(target: &'a str, policy: &RouteCachePolicy) -> Cow<'a, str> {
    let Some((path, query)) = target.split_once('?') else {
        return Cow::Borrowed(target);
    };
    if policy.ignore_query {
        return Cow::Borrowed(path);
    }
    if policy.ignore_query_params.is_empty() {
        return Cow::Borrowed(target);
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !policy.ignore_query_params.iter().any(|ignored| ignored == name)
        })
        .collect();
    match kept.is_empty() {
        true => Cow::Borrowed(path),
        false => Cow::Owned(format!("{path}?{}", kept.join("&"))),
    }
}

/// Only GET and HEAD use the cache, and not when the client says `no-store`.
pub fn request_may_use_cache(req: &RequestHeader) -> bool {
    // An Upgrade (a WebSocket handshake) asks for a connection, not a
    // representation: a stored answer to a plain GET of the same URL is no
    // answer to it, and handshakes must not wait on each other's cache lock.
    request_cacheable(req)
        && !asks_for_another_protocol(req)
        && !CacheControl::from_req_headers(req).is_some_and(|cc| cc.no_store())
}

/// An `Upgrade` to anything but `h2c` (which clients offer on plain GETs,
/// and the proxy does not take up).
fn asks_for_another_protocol(req: &RequestHeader) -> bool {
    req.headers.get_all(http::header::UPGRADE).iter().any(|value| {
        value.to_str().map_or(true, |v| v.split(',').any(|token| !token.trim().eq_ignore_ascii_case("h2c")))
    })
}

/// The cache key: the URL the client asked for (what a purge names), then
/// the scheme the origin is told (`X-Forwarded-Proto`: an origin's answer to
/// `http`, a redirect to HTTPS say, is no answer to `https`), then where the
/// request went after the filters (upstream group, then the `Host` and
/// target it was sent), so an A/B variant routed elsewhere gets its own
/// entry, then the route's `key_headers` ([`key_headers`]).
fn cache_key(client_url: &str, proto: &str, upstream: &str, upstream_target: &str, headers: &str) -> CacheKey {
    CacheKey::new(format!("{client_url}{URL_END}{proto}{URL_END}{upstream}{URL_END}{upstream_target}{headers}"), "")
}

/// The values of the route's `key_headers` in `req`, as the filters left
/// them, for the cache key; empty when the route names none. Each name
/// follows a NUL and each value a line feed (or, as hex, a carriage
/// return): none of them can be in a header, so an absent header and an
/// empty one, or two values and one that holds both, never give one key.
pub fn key_headers(req: &RequestHeader, policy: &RouteCachePolicy) -> String {
    let mut out = String::new();
    for name in &policy.key_headers {
        out.push(URL_END);
        out.push_str(name.as_str());
        for value in req.headers.get_all(name) {
            match value.to_str() {
                Ok(text) => {
                    out.push('\n');
                    out.push_str(text);
                }
                // obs-text, which a String cannot hold as it is.
                Err(_) => {
                    out.push('\r');
                    for byte in value.as_bytes() {
                        let _ = write!(out, "{byte:02x}");
                    }
                }
            }
        }
    }
    out
}

/// May this response be stored, and until when? The origin's headers decide,
/// unless the route overrides the TTL; `no-store`, `private`, `no-cache`,
/// `Vary: *`, `Set-Cookie` and the rules for requests that carried
/// `Authorization` always hold.
pub fn cacheability(resp: &ResponseHeader, policy: &RouteCachePolicy, authorization: bool) -> RespCacheable {
    let vary_star = resp
        .headers
        .get_all(http::header::VARY)
        .iter()
        .any(|v| v.as_bytes().split(|b| *b == b',').any(|name| name.trim_ascii() == b"*"));
    // A response that sets a cookie is one client's (a session, say): stored,
    // it would hand that cookie to every client after it. nginx and most CDNs
    // refuse these by default too.
    if vary_star || resp.headers.contains_key(http::header::SET_COOKIE) {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    }
    let cc = CacheControl::from_resp_headers(resp);
    // `no-cache` (standalone, not `no-cache="field"`, which only strips that
    // field) asks that every use be revalidated: a route's TTL must not turn
    // it into minutes of freshness.
    if policy.ttl.is_some() && cc.as_ref().is_some_and(CacheControl::no_cache) {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    }
    let now = SystemTime::now();
    // A response a cache above already held (a regional tier) arrives with
    // `Age`: it has been fresh that long, and stays fresh only for the rest
    // of its lifetime (RFC 9111, 4.2.3); a hit here counts its own `Age` on
    // from there.
    let age = upstream_age(resp);
    let received_at = now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
    // Most proxied responses carry no freshness at all: they are turned away
    // here, before the header is copied.
    let fresh_until = match policy.ttl {
        None => calculate_fresh_until(now, cc.as_ref(), resp, authorization, &ORIGIN_HEADERS_ONLY).map(|until| {
            // A lifetime counted from now (`s-maxage`, `max-age`) is cut by
            // the age; a date (`Expires`) already says when it ends.
            let relative = cc
                .as_ref()
                .is_some_and(|cc| matches!(cc.s_maxage(), Ok(Some(_))) || matches!(cc.max_age(), Ok(Some(_))));
            if relative { until.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH) } else { until }
        }),
        Some(ttl) => calculate_fresh_until(now, cc.as_ref(), resp, authorization, &ANY_STORABLE)
            .filter(|_| heuristically_cacheable(resp.status.as_u16()))
            .map(|_| now + ttl),
    };
    let Some(fresh_until) = fresh_until else {
        return RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
    };
    let (swr, sie) = calculate_serve_stale_durations(cc.as_ref(), &ORIGIN_HEADERS_ONLY);
    let mut header = resp.clone();
    // The age is kept as the entry's epoch; a hit writes its own `Age`, and
    // a stored one would be counted again when the entry is revalidated.
    header.remove_header(&http::header::AGE);
    if let Some(cc) = &cc {
        // Headers named in `private="..."` or `no-cache="..."` are not stored.
        cc.strip_private_headers(&mut header);
    }
    let mut meta = CacheMeta::new(fresh_until, now, swr, sie, header);
    if received_at != now {
        meta.set_epoch_override(received_at);
    }
    RespCacheable::Cacheable(meta)
}

/// The response's `Age`, if it has a valid one (delta-seconds); one too
/// large to count is 2^31 seconds (RFC 9111, 1.2.2).
fn upstream_age(resp: &ResponseHeader) -> Duration {
    const LARGEST: u64 = 1 << 31;
    let Some(value) = resp.headers.get(http::header::AGE).map(|v| v.as_bytes().trim_ascii()) else {
        return Duration::ZERO;
    };
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Duration::ZERO;
    }
    let secs = std::str::from_utf8(value).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(LARGEST);
    Duration::from_secs(secs.min(LARGEST))
}

/// The `Vary` variant of `req` for a stored response, or `None` if the
/// response does not vary.
pub fn variance(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut builder = VarianceBuilder::new();
    let mut names: Vec<String> = Vec::new();
    for value in meta.headers().get_all(http::header::VARY) {
        let Ok(value) = value.to_str() else { continue };
        names.extend(value.split(',').map(|n| n.trim().to_ascii_lowercase()).filter(|n| !n.is_empty()));
    }
    // The builder keeps the names sorted and each once.
    // Every line of a header counts, joined as one value: browsers send
    // cookies over HTTP/2 as separate lines, and two clients whose first
    // cookie matches must not share a variant.
    let values: Vec<Cow<[u8]>> =
        names.iter().map(|name| joined_lines(&req.headers, name).unwrap_or_default()).collect();
    for (name, value) in names.iter().zip(&values) {
        builder.add_value(name, value);
    }
    builder.finalize()
}

/// How a request used the cache, for metrics.
pub fn outcome(cache: &HttpCache) -> &'static str {
    match cache.phase() {
        CachePhase::Hit => "hit",
        CachePhase::Stale | CachePhase::StaleUpdating => "stale",
        CachePhase::Miss => "miss",
        CachePhase::Expired => "expired",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "revalidated",
        CachePhase::Disabled(NoCacheReason::NeverEnabled) => "bypass",
        _ => "uncacheable",
    }
}

/// Whether the response comes from storage (a hit, or stale), not from an
/// upstream.
pub fn served_from_cache(cache: &HttpCache) -> bool {
    matches!(cache.phase(), CachePhase::Hit | CachePhase::Stale | CachePhase::StaleUpdating)
}

/// This node's member of the `Cache-Status` list (RFC 9211) for `response`.
/// The member of a request the cache never saw (a route without caching) is
/// made once per config, not formatted on every request.
pub fn status_member(server: &ServerConfig, cache: &HttpCache, response: &ResponseHeader) -> HeaderValue {
    let node = &server.node_id;
    let ttl = || {
        let meta = cache.cache_meta();
        match meta.fresh_until().duration_since(SystemTime::now()) {
            Ok(left) => left.as_secs() as i64,
            Err(past) => -(past.duration().as_secs() as i64) - 1,
        }
    };
    // A body without a declared length can still grow past
    // `max_object_mb` after this header is sent, and then is not stored.
    // The origin's head says, not the client's answer: a miss answered 304
    // to a conditional request has no length of its own.
    let origin_head = cache.maybe_cache_meta().map_or(&response.headers, |meta| meta.headers());
    let declares_length = origin_head.contains_key(http::header::CONTENT_LENGTH);
    let stored = if cache.enabled() && declares_length { "; stored" } else { "" };
    let member = match cache.phase() {
        CachePhase::Disabled(NoCacheReason::NeverEnabled) | CachePhase::Uninit | CachePhase::CacheKey => {
            return server.cache_status_bypass.clone();
        }
        CachePhase::Hit => format!("{node}; hit; ttl={}", ttl()),
        CachePhase::Stale => format!("{node}; hit; ttl={}; detail=stale-if-error", ttl()),
        CachePhase::StaleUpdating => format!("{node}; hit; ttl={}; detail=stale-while-revalidate", ttl()),
        CachePhase::Miss => format!("{node}; fwd=miss{stored}"),
        CachePhase::Expired => format!("{node}; fwd=stale{stored}"),
        CachePhase::Revalidated => format!("{node}; fwd=stale; fwd-status=304; stored"),
        CachePhase::RevalidatedNoCache(_) => format!("{node}; fwd=stale; fwd-status=304"),
        // The predictor remembers this key's responses cannot be stored.
        CachePhase::Bypass => format!("{node}; fwd=miss; detail=uncacheable"),
        CachePhase::Disabled(reason) => format!("{node}; fwd=miss; detail={}", reason.as_str().to_ascii_lowercase()),
    };
    HeaderValue::try_from(member).expect("a node id and cache outcome make a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RouteCachePolicy {
        RouteCachePolicy { enabled: true, ..Default::default() }
    }

    #[test]
    fn what_may_use_the_cache() {
        let request = |method: &str, headers: &[(&str, &str)]| {
            let mut req = RequestHeader::build(method, b"/chat", None).unwrap();
            for (name, value) in headers {
                req.insert_header(name.to_string(), *value).unwrap();
            }
            request_may_use_cache(&req)
        };
        assert!(request("GET", &[]));
        assert!(request("HEAD", &[]));
        assert!(!request("POST", &[]));
        assert!(!request("GET", &[("cache-control", "no-store")]));
        assert!(!request("GET", &[("connection", "upgrade"), ("upgrade", "websocket")]), "a WebSocket handshake");
        assert!(request("GET", &[("connection", "upgrade"), ("upgrade", "h2c")]), "an h2c offer is a plain GET");
    }

    #[test]
    fn an_upstream_age_is_read_as_delta_seconds() {
        let age = |value: &str| {
            let mut resp = ResponseHeader::build(200, None).unwrap();
            resp.insert_header("age", value).unwrap();
            upstream_age(&resp)
        };
        assert_eq!(age("12"), Duration::from_secs(12));
        assert_eq!(age("99999999999999999999999"), Duration::from_secs(1 << 31), "too large: 2^31");
        assert_eq!(age("-5"), Duration::ZERO);
        assert_eq!(age("1.5"), Duration::ZERO);
        assert_eq!(upstream_age(&ResponseHeader::build(200, None).unwrap()), Duration::ZERO);
    }

    #[test]
    fn key_headers_tell_absent_empty_and_run_together_values_apart() {
        let mut p = policy();
        let req = |headers: &[(&str, &[u8])]| {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            for (name, value) in headers {
                req.append_header(name.to_string(), http::HeaderValue::from_bytes(value).unwrap()).unwrap();
            }
            req
        };
        assert_eq!(key_headers(&req(&[("x-v", b"a")]), &p), "", "no key_headers, no change to the key");
        p.key_headers = vec![http::HeaderName::from_static("x-v"), http::HeaderName::from_static("x-w")];
        let keys = [
            key_headers(&req(&[]), &p),
            key_headers(&req(&[("x-v", b"")]), &p),
            key_headers(&req(&[("x-v", b"a")]), &p),
            key_headers(&req(&[("x-v", b"a"), ("x-v", b"b")]), &p),
            key_headers(&req(&[("x-v", b"a:b")]), &p),
            key_headers(&req(&[("x-v", b"a"), ("x-w", b"b")]), &p),
            key_headers(&req(&[("x-v", b"\xe9")]), &p),
            key_headers(&req(&[("x-v", b"e9")]), &p),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(keys[2], key_headers(&req(&[("X-V", b"a")]), &p), "names are case-insensitive");
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(status, None).unwrap();
        for (name, value) in headers {
            resp.append_header(name.to_string(), *value).unwrap();
        }
        resp
    }

    #[test]
    fn ignored_query_parameters_leave_the_key() {
        let mut p = policy();
        assert_eq!(key_target("/a?x=1", &p), "/a?x=1");
        p.ignore_query_params = vec!["utm_source".into()];
        assert_eq!(key_target("/a?utm_source=m&x=1", &p), "/a?x=1");
        assert_eq!(key_target("/a?utm_source=m", &p), "/a");
        p.ignore_query = true;
        assert_eq!(key_target("/a?x=1", &p), "/a");
    }

    // RFC 9111 section 3: what a shared cache may store.
    #[test]
    fn storable_responses() {
        let p = policy();
        assert!(cacheability(&response(200, &[("cache-control", "max-age=60")]), &p, false).is_cacheable());
        assert!(!cacheability(&response(200, &[]), &p, false).is_cacheable(), "no freshness, no store");
        assert!(!cacheability(&response(200, &[("cache-control", "no-store, max-age=60")]), &p, false).is_cacheable());
        assert!(!cacheability(&response(200, &[("cache-control", "private, max-age=60")]), &p, false).is_cacheable());
        assert!(
            !cacheability(&response(200, &[("cache-control", "max-age=60"), ("vary", "*")]), &p, false).is_cacheable()
        );
        assert!(
            !cacheability(
                &response(200, &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding, *")]),
                &p,
                false
            )
            .is_cacheable()
        );
        // Section 3.5: Authorization needs public, s-maxage or must-revalidate.
        assert!(!cacheability(&response(200, &[("cache-control", "max-age=60")]), &p, true).is_cacheable());
        assert!(cacheability(&response(200, &[("cache-control", "public, max-age=60")]), &p, true).is_cacheable());
        assert!(cacheability(&response(200, &[("cache-control", "s-maxage=60")]), &p, true).is_cacheable());
    }

    // Section 4.2.1: s-maxage wins over max-age in a shared cache, and both over Expires.
    #[test]
    fn freshness_lifetime() {
        let p = policy();
        let fresh_for = |headers: &[(&str, &str)]| {
            let meta = cacheability(&response(200, headers), &p, false).unwrap_meta();
            meta.fresh_until().duration_since(SystemTime::now()).map(|d| d.as_secs() + 1).unwrap_or(0)
        };
        assert_eq!(fresh_for(&[("cache-control", "max-age=0, s-maxage=100")]), 100);
        assert_eq!(fresh_for(&[("cache-control", "max-age=50"), ("expires", "Thu, 01 Jan 2099 00:00:00 GMT")]), 50);
        assert!(fresh_for(&[("expires", "Thu, 01 Jan 2099 00:00:00 GMT")]) > 1_000_000);
        assert_eq!(fresh_for(&[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")]), 0);
        // Section 5.3: an invalid Expires means already expired.
        assert_eq!(fresh_for(&[("expires", "soon")]), 0);
    }

    #[test]
    fn route_ttl_overrides_but_never_stores_what_is_forbidden() {
        let p = RouteCachePolicy { ttl: Some(Duration::from_secs(30)), ..policy() };
        assert!(cacheability(&response(200, &[]), &p, false).is_cacheable());
        assert!(!cacheability(&response(200, &[("cache-control", "no-store")]), &p, false).is_cacheable());
        assert!(!cacheability(&response(500, &[]), &p, false).is_cacheable());
    }

    #[test]
    fn vary_selects_on_the_named_request_headers() {
        let p = policy();
        let meta =
            cacheability(&response(200, &[("cache-control", "max-age=60"), ("vary", "Accept-Language")]), &p, false)
                .unwrap_meta();
        let request = |lang: &str| {
            let mut req = RequestHeader::build("GET", b"/", None).unwrap();
            req.insert_header("accept-language", lang).unwrap();
            req
        };
        assert_eq!(variance(&meta, &request("en")), variance(&meta, &request("en")));
        assert_ne!(variance(&meta, &request("en")), variance(&meta, &request("fr")));
        let plain = cacheability(&response(200, &[("cache-control", "max-age=60")]), &p, false).unwrap_meta();
        assert_eq!(variance(&plain, &request("en")), None);
    }
}
