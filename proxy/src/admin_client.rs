//! The operator CLI's side of the admin API: one HTTP/1.1 request over a
//! plain TCP connection (the admin API listens on loopback), with the token
//! from `$CASCADE_ADMIN_TOKEN`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Send `method path` with `body` to the admin API at `addr` and print the
/// answer. A non-2xx answer is an error carrying the server's message.
pub fn call(addr: &str, method: &str, path: &str, body: &[u8]) -> Result<(), String> {
    let token = std::env::var("CASCADE_ADMIN_TOKEN").map_err(|_| "set CASCADE_ADMIN_TOKEN to the admin token")?;
    let addr = addr.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("cannot reach the admin API at {addr}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // The server may answer before it has read the body (a 413 for an
    // upload past its limit) and close: read its answer even if the write
    // failed, and report the write's error only if there is none.
    let sent = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
    let mut response = Vec::new();
    let received = stream.read_to_end(&mut response);
    if response.is_empty() {
        let error = sent.and(received).err().map_or_else(|| "no answer".to_string(), |e| e.to_string());
        return Err(format!("admin API at {addr}: {error}"));
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    // The admin API answers with Content-Length, so the body is complete.
    let pretty = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_string());
    if (200..300).contains(&status) {
        println!("{pretty}");
        Ok(())
    } else {
        Err(format!("admin API answered {status}: {pretty}"))
    }
}
