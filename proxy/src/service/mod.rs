//! The Pingora `ProxyHttp` implementation: the only place where the phases of
//! the request path are wired together. Each phase hands off to its module.
//!
//! ```text
//! request_filter ─────────► admission: sizes, Host, CDN-Loop       (4xx / 508)
//!                 ├───────► route::normalize + RouteTable::find   (400 / 404)
//!                 └───────► FilterChain::run_request              (reply / 5xx)
//! request_cache_filter,
//! cache_key_callback ─────► cache: enable, key                    (hit: served)
//! upstream_peer ──────────► upstream: this tier's server
//! fail_to_connect ────────► another server of the tier, else the next tier
//! error_while_proxy ──────► failover to the next tier
//! upstream_request_filter ► request id, X-Forwarded-For, CDN-Loop, Via
//! upstream_response_filter► failover on a configured 5xx
//! response_cache_filter ──► cache::cacheability, cache_vary_filter
//! response_filter ────────► InFlightChain::run_response (reverse order,
//!                           staged header edits at each filter's place),
//!                           Cache-Status, Via; a 1xx gets Via only
//! fail_to_proxy ──────────► reply: 502 / 504, through run_response too
//! logging ────────────────► metrics, access log
//! ```

mod admission;
mod forwarded;
pub(crate) mod headers;
mod reply;
mod request_id;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, RangeType, range_header_filter};

use crate::cache::{self, EdgeCache};
use crate::drain::InFlight;
use crate::filters::{FilterFailure, FilterRuntime, FilterTiming, InFlightChain, RequestHead, RequestOutcome};
use crate::metrics::Metrics;
use crate::route::{Route, normalize};
use crate::snapshot::Snapshot;
use crate::upstream::UpstreamGroup;
use headers::{
    CACHE_STATUS, CDN_LOOP, X_FORWARDED_FOR, empty_request, empty_response, ip_text, joined_cookies, remove_hop_by_hop,
    with_member,
};
use reply::ErrorReply;
pub use request_id::RequestIds;

/// The header carrying the request id, to the upstream and to the client.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The Cascade proxy service.
pub struct CascadeProxy {
    snapshot: Arc<ArcSwap<Snapshot>>,
    runtime: Arc<FilterRuntime>,
    metrics: Arc<Metrics>,
    cache: &'static EdgeCache,
    ids: RequestIds,
}

impl CascadeProxy {
    pub fn new(control: &crate::control::ControlPlane) -> Self {
        Self {
            snapshot: control.current.clone(),
            runtime: control.runtime.clone(),
            metrics: control.metrics.clone(),
            cache: control.cache,
            ids: RequestIds::new(),
        }
    }
}

/// Per-request state, from the first phase to the log line.
pub struct RequestCtx {
    id: Arc<str>,
    /// The id as a header value, made once for the upstream and the client.
    id_header: HeaderValue,
    started: Instant,
    /// The snapshot this request pinned at its start.
    snapshot: Option<Arc<Snapshot>>,
    route: Option<Arc<Route>>,
    /// The upstream group, as the filters left it.
    upstream: String,
    /// Filter instances kept for the response phase. Boxed, as are the two
    /// heads below: Pingora holds the context inside each request's future,
    /// which it moves (copies) whole, and a route without filters or a
    /// cache has no use for them.
    chain: Option<Exclusive<Box<InFlightChain>>>,
    /// A fail-closed failure, answered by `fail_to_proxy`.
    failure: Option<FilterFailure>,
    /// Fail-open failures, counted when the request is logged.
    skipped: Vec<FilterFailure>,
    /// Per-filter call times, recorded when the request is logged.
    timings: Vec<FilterTiming>,
    /// `host/path?query` as the client asked (normalized, ignored query
    /// parameters dropped): the cache key's first part. `None`: no caching.
    cache_url: Option<String>,
    /// The client sent `Authorization` (before any filter removed it).
    authorization: bool,
    /// The scheme the upstream is told in `X-Forwarded-Proto`, and the
    /// cache key holds.
    forwarded_proto: &'static str,
    /// An HTTP/2 request before the filters (path normalized), for a
    /// stale-while-revalidate refresh to replay (see `ready_http2_replay`).
    client_request: Option<Box<RequestHeader>>,
    /// The filtered request, set aside while the session holds the replay
    /// form; the cache-hit hooks read it and put it back.
    filtered_request: Option<Box<RequestHeader>>,
    /// The tier of the upstream group this request is on, and how many
    /// upstream attempts it has made (a connection refused and retried on
    /// the same tier is none).
    tier: usize,
    attempts: usize,
    /// Servers of this tier the request could not connect to.
    unreachable: Vec<std::net::SocketAddr>,
    /// The `Age` of a 304 that revalidated a stored entry: Pingora merges
    /// the 304 into the stored head without it, and the entry's new
    /// freshness must count it (a regional tier's copy was already old).
    revalidated_age: Option<HeaderValue>,
    /// Counts this request as in flight until its context is dropped, after
    /// its log line.
    _in_flight: InFlight,
}

/// Ready an HTTP/2 request for Pingora's background replay, which it makes
/// right after `should_serve_stale` says yes. Pingora replays an HTTP/1
/// request from the bytes the client sent, but an HTTP/2 one from the
/// session's header, which the filters have edited (they would run on their
/// own output) and which the replay's HTTP/1.1 parser cannot read (no
/// "HTTP/2" version, `:authority` instead of `Host`). So the session gets the
/// client's header in HTTP/1.1 form, and the filtered one goes to
/// `ctx.filtered_request` until `range_header_filter` (or `response_filter`)
/// puts it back. Between the two, Pingora's HEAD check alone reads the
/// client's method.
fn ready_http2_replay(session: &mut Session, ctx: &mut RequestCtx) {
    let mut replay = ctx.client_request.take().unwrap_or_else(|| Box::new(session.req_header().clone()));
    replay.set_version(http::Version::HTTP_11);
    if !replay.headers.contains_key(http::header::HOST)
        && let Some(authority) = replay.uri.authority().map(|a| a.as_str().to_string())
    {
        let _ = replay.insert_header(http::header::HOST, authority);
    }
    // The replay's box takes the filtered request in its place.
    std::mem::swap(session.req_header_mut(), &mut *replay);
    ctx.filtered_request = Some(replay);
}

/// Put back the filtered request that `ready_http2_replay` set aside.
fn restore_filtered_request(session: &mut Session, ctx: &mut RequestCtx) {
    if let Some(filtered) = ctx.filtered_request.take() {
        *session.req_header_mut() = *filtered;
    }
}

/// Makes a `Send` value `Sync` by giving out only `&mut` access: a shared
/// reference to it is useless, so sharing one between threads is harmless.
/// (Pingora requires `Sync` contexts; Wasmtime stores are only `Send`.)
pub struct Exclusive<T>(T);

// SAFETY: no `&self` method exposes the inner value.
unsafe impl<T: Send> Sync for Exclusive<T> {}

impl<T> Exclusive<T> {
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl RequestCtx {
    /// Keep what a chain observed before its instances are dropped.
    fn collect(&mut self, chain: &mut InFlightChain) {
        self.skipped.append(&mut chain.skipped);
        self.timings.append(&mut chain.timings);
    }
}

impl CascadeProxy {
    /// Route the request and run its filter chain. `Ok(true)` means a reply
    /// was already sent.
    async fn route_and_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snapshot = self.snapshot.load_full();
        ctx.snapshot = Some(snapshot.clone());
        session.set_read_timeout(Some(snapshot.config.server.request_limits.body_timeout));
        if let Err(refusal) = admission::check(session.req_header(), &snapshot.config.server) {
            // What follows on this connection cannot be trusted to be framed
            // as the client meant: answer, then close.
            session.set_keepalive(None);
            return reply::send_error(session, ctx, refusal).await;
        }

        // Routing and the upstream both see the normalized path; most paths
        // are already normal and are borrowed, not copied. An absolute-form
        // target goes on as a path, like nginx's, with its authority as the
        // Host when the client sent none (HTTP/1.0): routing reads the host
        // from there too.
        let header = session.req_header();
        let absolute_host = admission::absolute_form_authority(header).map(str::to_string);
        let rewritten = match normalize::path(header.uri.path()) {
            Ok(Cow::Borrowed(_)) if absolute_host.is_none() => None,
            Ok(path) => Some(match header.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.into_owned(),
            }),
            Err(e) => return reply::send_error(session, ctx, ErrorReply::new(400, e.to_string())).await,
        };
        if let Some(target) = rewritten {
            match normalize::with_path_and_query(&session.req_header().uri, &target) {
                Some(uri) => session.req_header_mut().set_uri(uri),
                None => {
                    return reply::send_error(session, ctx, ErrorReply::new(400, "invalid request target".into()))
                        .await;
                }
            }
        }
        if let Some(host) = absolute_host
            && !session.req_header().headers.contains_key(http::header::HOST)
            && session.req_header_mut().insert_header(http::header::HOST, host).is_err()
        {
            return reply::send_error(session, ctx, ErrorReply::new(400, "invalid request target".into())).await;
        }
        let (host, path) = (request_host(session), session.req_header().uri.path());
        let Some(route) = snapshot.routes.find(host, &normalize::without_parameters(path)).cloned() else {
            let message = format!("no route for host {host:?} and path {path:?}");
            return reply::send_error(session, ctx, ErrorReply::new(404, message)).await;
        };
        // `;` parameters inside the route's prefix (`/api;x/users` for
        // `/api`): the route is the one Tomcat and Spring would serve, but its
        // filters would not know the path for theirs.
        let prefix = &route.config.path_prefix;
        if !crate::route::prefix_matches(prefix, path) {
            let message = format!("path {path:?} has ';' parameters inside the route prefix {prefix:?}");
            return reply::send_error(session, ctx, ErrorReply::new(400, message)).await;
        }
        ctx.upstream = route.config.upstream.clone();
        ctx.route = Some(route.clone());
        let from_trusted_proxy = forwarded::from_trusted_proxy(session, &snapshot.config.server.trusted_proxies);
        ctx.forwarded_proto = forwarded::forwarded_proto(session, from_trusted_proxy);
        let header = session.req_header();
        ctx.authorization = header.headers.contains_key(http::header::AUTHORIZATION);
        if route.config.cache.enabled && cache::request_may_use_cache(header) {
            let target = header.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let host = normalize::host(host);
            ctx.cache_url = Some(format!("{host}{}", cache::key_target(target, &route.config.cache)));
        }
        if !from_trusted_proxy {
            forwarded::drop_claims_of_another_target(session);
        }
        if route.chain.is_empty() {
            return Ok(false);
        }
        // A stale-while-revalidate refresh replays the request through the
        // whole proxy, filters included. Pingora replays HTTP/1 from the bytes
        // the client sent, but HTTP/2 from the session's header, which the
        // filters are about to edit; so keep the client's.
        if ctx.cache_url.is_some() && session.is_http2() {
            ctx.client_request = Some(Box::new(session.req_header().clone()));
        }

        let client_ip: Arc<str> = forwarded::client_ip(session, &snapshot.config.server.trusted_proxies)
            .map(ip_text)
            .unwrap_or_default()
            .into();
        let head = RequestHead {
            header: std::mem::replace(session.req_header_mut(), empty_request()),
            id: ctx.id.clone(),
            client_ip,
            route_name: route.name.clone(),
            upstream: ctx.upstream.clone(),
            upstreams: snapshot.upstreams.clone(),
            replay: session.subrequest_ctx.is_some(),
            response_edits: Default::default(),
        };
        let (head, chain, outcome) = route.chain.run_request(&self.runtime, head).await;
        *session.req_header_mut() = head.header;
        ctx.upstream = head.upstream;
        let mut chain = Exclusive(chain);
        match outcome {
            RequestOutcome::Continue => {
                ctx.chain = Some(Exclusive(Box::new(chain.0)));
                Ok(false)
            }
            RequestOutcome::Respond(filter_reply) => {
                let sent = reply::send_filter_reply(session, ctx, &self.runtime, chain.get_mut(), filter_reply).await;
                ctx.collect(chain.get_mut());
                sent
            }
            RequestOutcome::Failed(failure) => {
                ctx.collect(chain.get_mut());
                drop(chain);
                let error = ErrorReply::filter_failed(&failure);
                ctx.failure = Some(failure);
                reply::send_error(session, ctx, error).await
            }
        }
    }
}

impl CascadeProxy {
    /// Move the request on to the next tier, if its group has one and the
    /// failover budget allows another attempt.
    fn fail_over(&self, ctx: &mut RequestCtx) -> bool {
        if !may_fail_over(ctx) {
            return false;
        }
        if let Some(tier) = current_tier(ctx) {
            self.metrics.record_upstream(tier.name(), "failover");
        }
        ctx.tier += 1;
        ctx.unreachable.clear();
        true
    }

    /// After `peer` refused a connection or timed out connecting, send the
    /// request to another server of the same tier, each server once (as
    /// nginx's `proxy_next_upstream error timeout`), if one is up.
    fn retry_in_tier(&self, ctx: &mut RequestCtx, peer: &HttpPeer) -> bool {
        let Some(&addr) = peer._address.as_inet() else { return false };
        ctx.unreachable.push(addr);
        let Some(tier) = current_tier(ctx) else { return false };
        tier.mark_unreachable(addr);
        if !tier.has_server_besides(&ctx.unreachable) {
            return false;
        }
        self.metrics.record_upstream(tier.name(), "retry");
        // Nothing reached the server: the failover budget is for upstreams
        // that answered badly, and a tier's next server is no failover.
        ctx.attempts -= 1;
        true
    }
}

/// The tier of its upstream group the request is on.
fn current_tier(ctx: &RequestCtx) -> Option<&UpstreamGroup> {
    ctx.snapshot.as_ref()?.upstreams.tier(&ctx.upstream, ctx.tier)
}

/// Whether an answer of `status` from the current tier sends the request on
/// to the next: a failover status, and a retry that can be made (a request
/// whose body outgrew the retry buffer cannot be sent again, and the client
/// then gets the tier's own answer, not an error of ours in its place).
fn fails_over_on(session: &Session, ctx: &RequestCtx, status: u16) -> bool {
    let Some(tier) = current_tier(ctx) else { return false };
    tier.config.failover_statuses.contains(&status)
        && session.req_header().method.is_idempotent()
        && !session.as_ref().retry_buffer_truncated()
        && may_fail_over(ctx)
}

/// Whether the request's group has a next tier and budget for another attempt.
fn may_fail_over(ctx: &RequestCtx) -> bool {
    let Some(snapshot) = ctx.snapshot.as_ref() else { return false };
    let Some(group) = snapshot.upstreams.get(&ctx.upstream) else { return false };
    snapshot.upstreams.tier(&ctx.upstream, ctx.tier + 1).is_some() && ctx.attempts < group.config.max_attempts
}

/// The request's host: the `Host` header, or the URI authority (HTTP/2).
fn request_host(session: &Session) -> &str {
    let header = session.req_header();
    header
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| header.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

#[async_trait]
impl ProxyHttp for CascadeProxy {
    type CTX = RequestCtx;

    /// No downstream modules. Pingora's default adds a response-compression
    /// module that is switched off yet still built and called on every
    /// request; the edge compresses nothing itself (origins do).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        let (id, id_header) = self.ids.next();
        RequestCtx {
            id_header,
            id,
            started: Instant::now(),
            snapshot: None,
            route: None,
            upstream: String::new(),
            chain: None,
            failure: None,
            skipped: Vec::new(),
            timings: Vec::new(),
            cache_url: None,
            authorization: false,
            forwarded_proto: "http",
            client_request: None,
            filtered_request: None,
            tier: 0,
            attempts: 0,
            unreachable: Vec::new(),
            revalidated_age: None,
            _in_flight: InFlight::request(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.route_and_filter(session, ctx).await
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A chunked body has no Content-Length for admission to check. The
        // count is Pingora's bytes read from the client, so a body replayed
        // to the next tier is not counted twice.
        let limit = ctx.snapshot.as_ref().map_or(u64::MAX, |s| s.config.server.request_limits.max_body_bytes);
        if session.body_bytes_read() as u64 > limit {
            return Error::e_explain(ErrorType::HTTPStatus(413), format!("request body exceeds {limit} bytes"));
        }
        Ok(())
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        if ctx.cache_url.is_some() {
            self.cache.enable(&mut session.cache);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<pingora::cache::CacheKey> {
        let (Some(url), Some(route)) = (&ctx.cache_url, &ctx.route) else {
            return Error::e_explain(ErrorType::InternalError, "cache enabled without a cache URL");
        };
        let target = session.req_header().uri.path_and_query().map_or("/", |pq| pq.as_str());
        let policy = &route.config.cache;
        let headers = cache::key_headers(session.req_header(), policy);
        // The Host the upstream is sent, port and all: an origin may answer
        // `example.com:1337` with links to that port, and no one else may be
        // served them. (The URL, which purges go by, has the routing form.)
        let upstream_target =
            format!("{}{}", request_host(session).to_ascii_lowercase(), cache::key_target(target, policy));
        Ok(self.cache.key(url, ctx.forwarded_proto, &ctx.upstream, &upstream_target, &headers))
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<pingora::cache::RespCacheable> {
        Ok(match &ctx.route {
            Some(_) if self.cache.too_large(resp) => {
                pingora::cache::RespCacheable::Uncacheable(pingora::cache::NoCacheReason::ResponseTooLarge)
            }
            Some(route) => match ctx.revalidated_age.take() {
                None => cache::cacheability(resp, &route.config.cache, ctx.authorization),
                // `resp` is the stored head with the 304 merged in.
                Some(age) => {
                    let mut merged = resp.clone();
                    merged.insert_header(http::header::AGE, age)?;
                    cache::cacheability(&merged, &route.config.cache, ctx.authorization)
                }
            },
            None => pingora::cache::RespCacheable::Uncacheable(pingora::cache::NoCacheReason::NeverEnabled),
        })
    }

    fn cache_vary_filter(
        &self,
        meta: &pingora::cache::CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<pingora::cache::key::HashBinary> {
        cache::variance(meta, req)
    }

    fn should_serve_stale(&self, session: &mut Session, ctx: &mut RequestCtx, error: Option<&Error>) -> bool {
        match error {
            // stale-while-revalidate: Pingora has checked the response's
            // window. The lock writer next replays this request in the
            // background to refresh the entry.
            None => {
                if session.cache.is_cache_lock_writer() && session.is_http2() {
                    ready_http2_replay(session, ctx);
                }
                true
            }
            // stale-if-error (window checked by Pingora too): only when the
            // upstream failed, not when the client did, and not while a tier
            // answering a failover status has a next tier to try (Pingora
            // asks before `upstream_response_filter` could fail over).
            Some(e) => {
                let failing_over = match e.etype() {
                    ErrorType::HTTPStatus(status) => fails_over_on(session, ctx, *status),
                    _ => false,
                };
                e.esource() == &ErrorSource::Upstream && !failing_over
            }
        }
    }

    fn cache_not_modified_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        // Conditional headers as the filters left them, also while an
        // HTTP/2 replay holds the session's header.
        let request = ctx.filtered_request.as_deref().unwrap_or_else(|| session.req_header());
        Ok(pingora::protocols::http::conditional_filter::not_modified_filter(request, resp))
    }

    fn range_header_filter(&self, session: &mut Session, resp: &mut ResponseHeader, ctx: &mut RequestCtx) -> RangeType {
        restore_filtered_request(session, ctx);
        // Pingora's default, 200 ranges at most.
        range_header_filter(session.req_header(), resp, Some(200))
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let snapshot = ctx.snapshot.clone().expect("request_filter pinned a snapshot");
        // Consistent hashing keys on the cache key, or on the path when the
        // request does not use the cache.
        let affinity = ctx.cache_url.as_deref().unwrap_or_else(|| session.req_header().uri.path());
        let key_hash = crate::upstream::key_hash(affinity);
        loop {
            let Some(tier) = snapshot.upstreams.tier(&ctx.upstream, ctx.tier) else {
                let message = format!("upstream group {:?} has no tier {}", ctx.upstream, ctx.tier);
                return Error::e_explain(ErrorType::InternalError, message);
            };
            // A tier whose servers are all down is skipped while a later tier
            // remains; the last tier is tried regardless.
            let addr = match tier.pick(key_hash, &ctx.unreachable) {
                Some(addr) => addr,
                None if self.fail_over(ctx) => continue,
                None => tier.any_server(),
            };
            ctx.attempts += 1;
            self.metrics.record_upstream(tier.name(), "sent");
            return Ok(tier.peer(addr));
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the upstream, so any method may go on: to another
        // server of this tier, else to the next tier.
        let retry = self.retry_in_tier(ctx, peer) || self.fail_over(ctx);
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        // The upstream may have acted on the request: only idempotent
        // methods with their whole body still at hand go on, and only while
        // nothing of the response has reached the client.
        // Failures of our own (a response filter, a body limit) are not the
        // upstream's, and a retry would run the request without them.
        let replayable = e.esource() == &ErrorSource::Upstream
            && ctx.failure.is_none()
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            // An interim answer (103 Early Hints) is no answer yet; a 101
            // is (the connection is now the upgraded protocol's).
            && session.response_written().is_none_or(|r| {
                r.status.is_informational() && r.status != http::StatusCode::SWITCHING_PROTOCOLS
            });
        if replayable && self.fail_over(ctx) {
            e.set_retry(true);
        } else if replayable {
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_request.insert_header(REQUEST_ID_HEADER, ctx.id_header.clone())?;
        if let Some(snapshot) = &ctx.snapshot {
            let server = &snapshot.config.server;
            let cdn_loop = with_member(&upstream_request.headers, &CDN_LOOP, server.cdn_loop.clone());
            upstream_request.insert_header("cdn-loop", cdn_loop)?;
            let via = with_member(&upstream_request.headers, http::header::VIA, server.via.clone());
            upstream_request.insert_header("via", via)?;
        }
        if let Some(ip) = forwarded::peer_ip(session) {
            let ip = HeaderValue::try_from(ip_text(ip)).expect("an IP address is a valid header value");
            let forwarded = with_member(&upstream_request.headers, &X_FORWARDED_FOR, ip);
            upstream_request.insert_header("x-forwarded-for", forwarded)?;
        }
        // HTTP/2 clients send each cookie on a line of its own (so may a
        // refresh replaying one); an HTTP/1.1 origin expects one line.
        if let Some(cookies) = joined_cookies(&upstream_request.headers) {
            upstream_request.insert_header(http::header::COOKIE, cookies)?;
        }
        upstream_request.insert_header("x-forwarded-proto", HeaderValue::from_static(ctx.forwarded_proto))?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        remove_hop_by_hop(upstream_response);
        let status = upstream_response.status.as_u16();
        if status == 304 {
            ctx.revalidated_age = upstream_response.headers.get(http::header::AGE).cloned();
        }
        if let Some(tier) = current_tier(ctx).filter(|_| fails_over_on(session, ctx, status)) {
            // An upstream error here reaches `error_while_proxy`, which moves
            // the request on to the next tier; nothing was sent downstream yet.
            let message = format!("tier {:?} answered {status}", tier.name());
            return Err(Error::explain(ErrorType::HTTPStatus(status), message).into_up());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Pingora passes a 100 or 103 through here too. It gets Via, as every
        // message a proxy forwards does (RFC 9110, 7.6.3); the rest, the
        // filters' response phase and their staged headers included, is for
        // the final response.
        let interim = upstream_response.status.is_informational()
            && upstream_response.status != http::StatusCode::SWITCHING_PROTOCOLS;
        if let Some(snapshot) = &ctx.snapshot {
            let server = &snapshot.config.server;
            let via = with_member(&upstream_response.headers, http::header::VIA, server.via.clone());
            upstream_response.insert_header("via", via)?;
            if !interim {
                let member = cache::status_member(server, &session.cache, upstream_response);
                let cache_status = with_member(&upstream_response.headers, &CACHE_STATUS, member);
                upstream_response.insert_header("cache-status", cache_status)?;
            }
        }
        if interim {
            return Ok(());
        }
        restore_filtered_request(session, ctx);
        if let Some(mut chain) = ctx.chain.take() {
            let response = std::mem::replace(upstream_response, empty_response());
            let (response, result) = chain.get_mut().run_response(&self.runtime, response, &ctx.id).await;
            *upstream_response = response;
            ctx.collect(chain.get_mut());
            // Returning the instances to the pool now, not at the end of the body.
            drop(chain);
            if let Err(failure) = result {
                let message = failure.to_string();
                let error = ErrorReply::filter_failed(&failure);
                ctx.failure = Some(failure);
                // On a cache hit Pingora answers this error itself, with a
                // bare 500 and no fail_to_proxy: answer first, as the route
                // says (its failure status, our error body, the request id).
                if cache::served_from_cache(&session.cache) {
                    session.set_keepalive(None);
                    let _ = reply::send_error(session, ctx, error).await;
                }
                return Error::e_explain(ErrorType::HTTPStatus(500), message);
            }
        }
        upstream_response.insert_header(REQUEST_ID_HEADER, ctx.id_header.clone())?;
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        // The connection is not reused after a failure (below), so the error
        // answer says `Connection: close`: a client that took its
        // `keep-alive` at its word would send its next request into a
        // closed socket.
        session.set_keepalive(None);
        let mut chain = ctx.chain.take();
        // A response already under way (its head sent, its body cut short by
        // the upstream) cannot turn into an error answer: ours would follow
        // the origin's bytes and end the message as if it were whole, for the
        // client and for any cache in front. The connection closes with the
        // message unfinished, which says it is broken.
        let head_sent = session.response_written().is_some_and(|r| {
            // A 100 or 103 before it is no answer yet: the error still can be.
            !r.status.is_informational() || r.status == http::StatusCode::SWITCHING_PROTOCOLS
        });
        if head_sent {
            if let Some(mut chain) = chain {
                ctx.collect(chain.get_mut());
            }
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        }
        let error = match &ctx.failure {
            Some(failure) => ErrorReply::filter_failed(failure),
            None => ErrorReply::from_proxy_error(e),
        };
        let mut error_code = error.status;
        if error_code > 0 {
            // The upstream failed after the request phase went through: the
            // filters see the error answer as they would the upstream's.
            let _ = match chain.as_mut() {
                Some(chain) if ctx.failure.is_none() => {
                    reply::send_error_through(session, ctx, &self.runtime, chain.get_mut(), error).await
                }
                _ => reply::send_error(session, ctx, error).await,
            };
            // Unless a filter failed closed on it, and answered instead.
            error_code = ctx.failure.as_ref().map_or(error_code, |failure| failure.status);
        }
        // Return the pool slots now, keeping what the chain observed for the log.
        if let Some(mut chain) = chain {
            ctx.collect(chain.get_mut());
        }
        FailToProxy { error_code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(mut chain) = ctx.chain.take() {
            ctx.collect(chain.get_mut());
        }
        self.metrics.record_filter_latencies(&ctx.timings);
        for failure in ctx.skipped.iter().chain(&ctx.failure) {
            self.metrics.record_filter_failure(&failure.module, failure.kind.as_str());
        }
        let status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        let route_name = ctx.route.as_ref().map_or("-", |r| &r.name);
        // A stale-while-revalidate refresh is Pingora replaying the request
        // in the background: no client sent it, or waits on it.
        let background = session.subrequest_ctx.is_some();
        if background {
            self.metrics.record_cache_refresh();
        } else {
            self.metrics.record_request(route_name, status);
            if ctx.route.as_ref().is_some_and(|r| r.config.cache.enabled) {
                self.metrics.record_cache(route_name, cache::outcome(&session.cache));
            }
        }
        if !log::log_enabled!(target: "cascade::access", log::Level::Info) {
            return;
        }
        let header = session.req_header();
        let line = serde_json::json!({
            "request_id": ctx.id.as_ref(),
            "method": header.method.as_str(),
            "path": header.uri.path(),
            "route": ctx.route.as_ref().map(|r| r.name.as_ref()),
            "upstream": ctx.upstream,
            "tier": current_tier(ctx).filter(|_| ctx.attempts > 0).map(|t| t.name()),
            "cache": cache::outcome(&session.cache),
            "status": status,
            "duration_us": ctx.started.elapsed().as_micros() as u64,
            "filter_failure": ctx.failure.as_ref().map(|f| f.to_string()),
            "background": background,
            "error": e.map(|e| e.to_string()),
        });
        log::info!(target: "cascade::access", "{line}");
    }
}
