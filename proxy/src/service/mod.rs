//! The Pingora `ProxyHttp` implementation: the only place where the phases of
//! the request path are wired together. Each phase hands off to its module.
//!
//! ```text
//! request_filter ─────────► route::normalize + RouteTable::find   (400 / 404)
//!                 └───────► FilterChain::run_request              (reply / 5xx)
//! upstream_peer ──────────► upstream::UpstreamGroup::peer
//! upstream_request_filter ► request id, X-Forwarded-For
//! response_filter ────────► InFlightChain::run_response (reverse order)
//! logging ────────────────► access log
//! ```

mod reply;
mod request_id;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;

use crate::filters::{FilterFailure, FilterRuntime, FilterTiming, InFlightChain, RequestHead, RequestOutcome};
use crate::metrics::Metrics;
use crate::route::{Route, normalize};
use crate::snapshot::Snapshot;
use reply::ErrorReply;
pub use request_id::RequestIds;

/// The header carrying the request id, to the upstream and to the client.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The Cascade proxy service.
pub struct CascadeProxy {
    snapshot: Arc<ArcSwap<Snapshot>>,
    runtime: Arc<FilterRuntime>,
    metrics: Arc<Metrics>,
    ids: RequestIds,
}

impl CascadeProxy {
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, runtime: Arc<FilterRuntime>, metrics: Arc<Metrics>) -> Self {
        Self { snapshot, runtime, metrics, ids: RequestIds::new() }
    }
}

/// Per-request state, from the first phase to the log line.
pub struct RequestCtx {
    id: Arc<str>,
    started: Instant,
    /// The snapshot this request pinned at its start.
    snapshot: Option<Arc<Snapshot>>,
    route: Option<Arc<Route>>,
    /// The upstream group, as the filters left it.
    upstream: String,
    /// Filter instances kept for the response phase.
    chain: Option<Exclusive<InFlightChain>>,
    /// A fail-closed failure, answered by `fail_to_proxy`.
    failure: Option<FilterFailure>,
    /// Fail-open failures, counted when the request is logged.
    skipped: Vec<FilterFailure>,
    /// Per-filter call times, recorded when the request is logged.
    timings: Vec<FilterTiming>,
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

        // Routing and the upstream both see the normalized path; most paths
        // are already normal and are borrowed, not copied.
        let header = session.req_header();
        let rewritten = match normalize::path(header.uri.path()) {
            Ok(Cow::Borrowed(_)) => None,
            Ok(Cow::Owned(path)) => Some(match header.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            }),
            Err(e) => return reply::send_error(session, ctx, ErrorReply::new(400, e.to_string())).await,
        };
        if let Some(target) = rewritten {
            match target.parse() {
                Ok(uri) => session.req_header_mut().set_uri(uri),
                Err(_) => {
                    return reply::send_error(session, ctx, ErrorReply::new(400, "invalid request target".into()))
                        .await;
                }
            }
        }
        let (host, path) = (request_host(session), session.req_header().uri.path());
        let Some(route) = snapshot.routes.find(host, path).cloned() else {
            let message = format!("no route for host {host:?} and path {path:?}");
            return reply::send_error(session, ctx, ErrorReply::new(404, message)).await;
        };
        ctx.upstream = route.config.upstream.clone();
        ctx.route = Some(route.clone());
        if route.chain.is_empty() {
            return Ok(false);
        }

        let client_ip: Arc<str> =
            session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_string()).unwrap_or_default().into();
        let placeholder = RequestHeader::build_no_case(http::Method::GET, b"/", Some(0))?;
        let head = RequestHead {
            header: std::mem::replace(session.req_header_mut(), placeholder),
            id: ctx.id.clone(),
            client_ip,
            route_name: route.name.clone(),
            upstream: ctx.upstream.clone(),
            upstreams: snapshot.upstreams.clone(),
        };
        let (head, chain, outcome) = route.chain.run_request(&self.runtime, head, &route.name).await;
        *session.req_header_mut() = head.header;
        ctx.upstream = head.upstream;
        let mut chain = Exclusive(chain);
        match outcome {
            RequestOutcome::Continue => {
                ctx.chain = Some(chain);
                Ok(false)
            }
            RequestOutcome::Respond(filter_reply) => {
                let sent = reply::send_filter_reply(session, ctx, chain.get_mut(), filter_reply).await;
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

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            id: self.ids.next(),
            started: Instant::now(),
            snapshot: None,
            route: None,
            upstream: String::new(),
            chain: None,
            failure: None,
            skipped: Vec::new(),
            timings: Vec::new(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.route_and_filter(session, ctx).await
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let snapshot = ctx.snapshot.as_ref().expect("request_filter pinned a snapshot");
        match snapshot.upstreams.get(&ctx.upstream) {
            Some(group) => Ok(group.peer()),
            None => Error::e_explain(ErrorType::InternalError, format!("upstream group {:?} vanished", ctx.upstream)),
        }
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        upstream_request.insert_header(REQUEST_ID_HEADER, ctx.id.as_ref())?;
        if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
            let forwarded = match upstream_request.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(earlier) => format!("{earlier}, {ip}"),
                None => ip.to_string(),
            };
            upstream_request.insert_header("x-forwarded-for", forwarded)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(mut chain) = ctx.chain.take() {
            let placeholder = ResponseHeader::build_no_case(200, Some(0))?;
            let response = std::mem::replace(upstream_response, placeholder);
            let (response, result) = chain.get_mut().run_response(response, &ctx.id).await;
            *upstream_response = response;
            ctx.collect(chain.get_mut());
            // Returning the instances to the pool now, not at the end of the body.
            drop(chain);
            if let Err(failure) = result {
                let message = failure.to_string();
                ctx.failure = Some(failure);
                return Error::e_explain(ErrorType::HTTPStatus(500), message);
            }
        }
        upstream_response.insert_header(REQUEST_ID_HEADER, ctx.id.as_ref())?;
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        // Return the pool slots now, keeping what the chain observed for the log.
        if let Some(mut chain) = ctx.chain.take() {
            ctx.collect(chain.get_mut());
        }
        let error = match &ctx.failure {
            Some(failure) => ErrorReply::filter_failed(failure),
            None => ErrorReply::from_proxy_error(e),
        };
        let code = error.status;
        if code > 0 {
            let _ = reply::send_error(session, ctx, error).await;
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(mut chain) = ctx.chain.take() {
            ctx.collect(chain.get_mut());
        }
        for timing in &ctx.timings {
            self.metrics.record_filter_latency(&timing.module, timing.phase, timing.elapsed);
        }
        for failure in ctx.skipped.iter().chain(&ctx.failure) {
            self.metrics.record_filter_failure(&failure.module, failure.kind.as_str());
        }
        let status = session.response_written().map(|r| r.status.as_u16()).unwrap_or(0);
        self.metrics.record_request(ctx.route.as_ref().map_or("-", |r| &r.name), status);
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
            "status": status,
            "duration_us": ctx.started.elapsed().as_micros() as u64,
            "filter_failure": ctx.failure.as_ref().map(|f| f.to_string()),
            "error": e.map(|e| e.to_string()),
        });
        log::info!(target: "cascade::access", "{line}");
    }
}
