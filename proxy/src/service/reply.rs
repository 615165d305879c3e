//! Answers the proxy gives itself: filter replies and errors.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;

use super::{REQUEST_ID_HEADER, RequestCtx};
use crate::cache;
use crate::filters::bindings::cascade::filter::types::Reply;
use crate::filters::host::{host_owned, is_token};
use crate::filters::{FilterFailure, FilterRuntime, InFlightChain};

/// An error answer: a status and a message, sent as JSON with the request id.
pub struct ErrorReply {
    pub status: u16,
    pub message: String,
}

impl ErrorReply {
    pub fn new(status: u16, message: String) -> Self {
        Self { status, message }
    }

    /// A fail-closed filter failure, with its entry's failure status.
    pub fn filter_failed(failure: &FilterFailure) -> Self {
        Self::new(failure.status, failure.to_string())
    }

    /// An error from Pingora, with the status it maps to.
    pub fn from_proxy_error(e: &Error) -> Self {
        let status = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            // As nginx: an upstream that did not answer in time is a 504.
            ErrorType::ConnectTimedout
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    // The body stalled past `server.body_timeout_secs`, as
                    // nginx's `client_body_timeout` answers.
                    ErrorType::ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        let message = match status {
            502 => format!("upstream unavailable: {}", e.etype().as_str()),
            504 => "upstream timed out".to_string(),
            408 => "the request body stalled".to_string(),
            _ => e.etype().as_str().to_string(),
        };
        Self::new(status, message)
    }
}

/// Send an error reply. Always `Ok(true)`: the request is answered.
pub async fn send_error(session: &mut Session, ctx: &RequestCtx, error: ErrorReply) -> Result<bool> {
    let (header, body) = error_message(ctx, &error)?;
    write(session, ctx, header, body).await
}

/// Send an error reply about the upstream (a 502 or 504) after the response
/// phase of the filters that saw the request, as a filter's reply goes: the
/// client then gets their headers on it too, such as `RateLimit`.
pub async fn send_error_through(
    session: &mut Session,
    ctx: &mut RequestCtx,
    runtime: &FilterRuntime,
    chain: &mut InFlightChain,
    error: ErrorReply,
) -> Result<bool> {
    let (header, body) = error_message(ctx, &error)?;
    write_through(session, ctx, runtime, chain, header, body).await
}

/// An error reply's head and JSON body, which names the request.
fn error_message(ctx: &RequestCtx, error: &ErrorReply) -> Result<(ResponseHeader, Bytes)> {
    let body = serde_json::json!({
        "error": error.message,
        "status": error.status,
        "request_id": ctx.id.as_ref(),
    })
    .to_string();
    let mut header = ResponseHeader::build(error.status, Some(4))?;
    header.insert_header("content-type", "application/json")?;
    Ok((header, Bytes::from(body)))
}

/// Send a filter's reply, after the response phase of the filters that saw
/// the request. A reply header the host refuses is dropped with a warning.
pub async fn send_filter_reply(
    session: &mut Session,
    ctx: &mut RequestCtx,
    runtime: &FilterRuntime,
    chain: &mut InFlightChain,
    reply: Reply,
) -> Result<bool> {
    let mut header = match ResponseHeader::build(reply.status, Some(reply.headers.len() + 2)) {
        Ok(header) => header,
        Err(_) => {
            let message = format!("a filter replied with invalid status {}", reply.status);
            return send_error(session, ctx, ErrorReply::new(500, message)).await;
        }
    };
    // Invalid headers are dropped, and make one log line however many: a
    // filter must not be able to write hundreds of the host's lines.
    let (mut dropped, mut first) = (0usize, None);
    for (name, value) in reply.headers {
        // As written, like the names of the filters' header edits.
        let valid = is_token(&name) && !host_owned(&name);
        if !valid || header.append_header(Bytes::copy_from_slice(name.as_bytes()), value.as_str()).is_err() {
            dropped += 1;
            first.get_or_insert(name);
        }
    }
    if let Some(first) = first {
        log::warn!("request {}: dropping {dropped} invalid reply header(s), the first {first:?}", ctx.id);
    }
    write_through(session, ctx, runtime, chain, header, Bytes::from(reply.body)).await
}

/// Run the response phase of `chain` on an answer the proxy made, then send
/// it; if a filter fails closed there, its failure is sent instead.
async fn write_through(
    session: &mut Session,
    ctx: &mut RequestCtx,
    runtime: &FilterRuntime,
    chain: &mut InFlightChain,
    header: ResponseHeader,
    body: Bytes,
) -> Result<bool> {
    let (header, result) = chain.run_response(runtime, header, &ctx.id).await;
    if let Err(failure) = result {
        let error = ErrorReply::filter_failed(&failure);
        ctx.failure = Some(failure);
        return send_error(session, ctx, error).await;
    }
    write(session, ctx, header, body).await
}

async fn write(session: &mut Session, ctx: &RequestCtx, mut header: ResponseHeader, body: Bytes) -> Result<bool> {
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header(REQUEST_ID_HEADER, ctx.id_header.clone())?;
    if let Some(snapshot) = &ctx.snapshot {
        // The proxy answered itself, before or after consulting the cache.
        let member = cache::status_member(&snapshot.config.server, &session.cache, &header);
        header.insert_header("cache-status", member)?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(header), head_only).await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(true)
}
