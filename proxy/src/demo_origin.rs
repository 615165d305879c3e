//! A small origin that echoes each request back as JSON: the demo's origin,
//! and the origin of the end-to-end tests.
//!
//! The response body is `{"method", "path", "query", "headers", "count"}` as
//! received, where `count` numbers the requests this origin has answered
//! (health probes aside), and the `x-origin-addr` response header names the
//! origin that answered. Request headers steer it, for tests:
//! - `x-echo-status: 503` sets the status;
//! - `x-echo-header: name: value` adds a response header; several are
//!   separated by `|`, as in `cache-control: max-age=60|etag: "v1"`;
//! - `x-echo-delay-ms: 200` answers late;
//! - `x-echo-body-bytes: 4096` pads the body.
//!
//! It honours `If-None-Match` and `If-Modified-Since` against the `ETag` and
//! `Last-Modified` it was asked to send, with a 304, as a real origin would.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

/// A running echo origin.
pub struct EchoOrigin {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
}

impl EchoOrigin {
    /// Serve on `listener` from background threads, one per connection.
    pub fn spawn(listener: TcpListener) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        thread::Builder::new().name("echo-origin".into()).spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = counter.clone();
                let _ = thread::Builder::new().spawn(move || {
                    let _ = serve_connection(stream, addr, &counter);
                });
            }
        })?;
        Ok(Self { addr, requests })
    }

    /// Requests answered so far, health probes aside.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Serve on an ephemeral loopback port.
    pub fn start() -> io::Result<Self> {
        Self::spawn(TcpListener::bind("127.0.0.1:0")?)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body_len: usize,
}

fn serve_connection(stream: TcpStream, addr: SocketAddr, requests: &AtomicU64) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let Some(request) = read_request(&mut reader)? else {
            return Ok(());
        };
        let close = request.headers.iter().any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("close"));
        let probe = request.headers.iter().any(|(n, v)| n == "user-agent" && v == "cascade-health");
        let count = if probe { requests.load(Ordering::SeqCst) } else { requests.fetch_add(1, Ordering::SeqCst) + 1 };
        writer.write_all(&respond(&request, addr, count))?;
        if close {
            return Ok(());
        }
    }
}

fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        if line == b"\r\n" || line == b"\n" {
            if head.is_empty() {
                continue;
            }
            break;
        }
        head.push(String::from_utf8_lossy(&line).trim_end().to_string());
    }
    let mut first = head[0].split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or("/").to_string();
    let headers: Vec<(String, String)> = head[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let body_len = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked(reader)?
    } else {
        let len = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0usize);
        io::copy(&mut reader.take(len as u64), &mut io::sink())? as usize
    };
    Ok(Some(Request { method, target, headers, body_len }))
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<usize> {
    let mut total = 0;
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        let size_text = size_line.trim().split(';').next().unwrap_or("0");
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(total);
                }
            }
        }
        total += io::copy(&mut reader.take(size as u64), &mut io::sink())? as usize;
        let mut crlf = String::new();
        reader.read_line(&mut crlf)?;
    }
}

fn respond(request: &Request, addr: SocketAddr, count: u64) -> Vec<u8> {
    let (path, query) = match request.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (request.target.as_str(), None),
    };
    let mut headers = serde_json::Map::new();
    for (name, value) in &request.headers {
        let entry = headers.entry(name.clone()).or_insert_with(|| serde_json::Value::String(String::new()));
        if let serde_json::Value::String(existing) = entry {
            if !existing.is_empty() {
                existing.push_str(", ");
            }
            existing.push_str(value);
        }
    }
    let find = |name: &str| request.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    if let Some(ms) = find("x-echo-delay-ms").and_then(|s| s.parse().ok()) {
        thread::sleep(Duration::from_millis(ms));
    }
    let extra: Vec<(&str, &str)> = find("x-echo-header")
        .into_iter()
        .flat_map(|h| h.split('|'))
        .filter_map(|h| h.split_once(':'))
        .map(|(n, v)| (n.trim(), v.trim()))
        .collect();
    let sent = |name: &str| extra.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v);
    let not_modified = match (find("if-none-match"), sent("etag"), find("if-modified-since"), sent("last-modified")) {
        (Some(tags), Some(etag), _, _) => tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"),
        (None, _, Some(since), Some(modified)) => since == modified,
        _ => false,
    };
    let status: u16 = match not_modified {
        true => 304,
        false => find("x-echo-status").and_then(|s| s.parse().ok()).unwrap_or(200),
    };
    let pad = find("x-echo-body-bytes").and_then(|s| s.parse().ok()).map(|n: usize| "x".repeat(n.min(16 << 20)));
    let body = serde_json::json!({
        "method": request.method,
        "path": path,
        "query": query,
        "headers": headers,
        "body_bytes": request.body_len,
        "count": count,
        "pad": pad,
    })
    .to_string();
    let mut out = format!(
        "HTTP/1.1 {status} Echo\r\ncontent-type: application/json\r\nx-origin: echo\r\nx-origin-addr: {addr}\r\n"
    );
    for (name, value) in &extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if status == 304 {
        out.push_str("\r\n");
        return out.into_bytes();
    }
    let body = if request.method == "HEAD" { "" } else { body.as_str() };
    out.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    out.into_bytes()
}
