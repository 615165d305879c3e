//! Real parts for black-box tests: the `cascade` binary started from a config
//! written to a temp dir, the echo origin on an ephemeral port, real filter
//! components compiled from `filters/`, and a real HTTP client.

#![allow(dead_code)]

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use cascade::demo_origin::EchoOrigin;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A filter component built from this workspace, for example `rewrite`:
/// a shipped filter, or a test fixture from `tests/filters`.
pub fn wasm(name: &str) -> PathBuf {
    let file = format!("{name}.wasm");
    let shipped = root().join("target/wasm32-wasip2/release").join(&file);
    let fixture = root().join("target/fixtures/wasm32-wasip2/release").join(&file);
    let path = if shipped.is_file() { shipped } else { fixture };
    assert!(path.is_file(), "{} is missing: build the filters first with scripts/build-filters.sh", path.display());
    path
}

/// A component that imports one instance, named `interface` (for example
/// `wasi:http/outgoing-handler@0.2.0`), and does nothing else.
pub fn component_importing(interface: &str) -> Vec<u8> {
    use wasm_encoder::{ComponentImportSection, ComponentTypeRef, ComponentTypeSection, InstanceType};
    let mut types = ComponentTypeSection::new();
    types.instance(&InstanceType::new());
    let mut imports = ComponentImportSection::new();
    imports.import(interface, ComponentTypeRef::Instance(0));
    let mut component = wasm_encoder::Component::new();
    component.section(&types).section(&imports);
    component.finish()
}

pub fn cascade_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cascade")
}

/// One echo origin shared by the whole test binary.
pub fn origin() -> SocketAddr {
    static ORIGIN: OnceLock<EchoOrigin> = OnceLock::new();
    ORIGIN.get_or_init(|| EchoOrigin::start().expect("start echo origin")).addr()
}

/// A loopback port that nothing listens on right now, and that no other
/// test in this binary has been given. The kernel hands a released port out
/// again, so two tests starting at once could otherwise both get it: the
/// second proxy's readiness check then reaches the first one's listener.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<std::collections::HashSet<u16>>> = OnceLock::new();
    let mut given = GIVEN.get_or_init(Default::default).lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if given.insert(port) {
            return port;
        }
    }
}

/// A config for one proxy under test, written out by [`Proxy::start`].
#[derive(Clone)]
pub struct ProxyConfig {
    /// Extra text appended to `cascade.toml` (upstreams, limits, TLS...).
    pub main_extra: String,
    /// Extra keys of its `[modules]` table.
    pub modules_extra: String,
    /// The route file's text.
    pub routes: String,
    /// Modules to put in the modules dir: (name, component bytes).
    pub modules: Vec<(String, Vec<u8>)>,
    /// Turn on the admin API, with token [`ADMIN_TOKEN`].
    pub admin: bool,
    /// The admin API's upload limit: 2 MiB unless a test needs more.
    pub admin_upload_mb: u64,
    /// Extra keys for the `[server]` table, such as `node_id`.
    pub server_extra: String,
}

/// The admin token of proxies started with `admin: true`.
pub const ADMIN_TOKEN: &str = "test-admin-token";

impl ProxyConfig {
    /// Routes over the shared echo origin as upstream group `origin`, with
    /// these filter modules available.
    pub fn new(routes: &str, modules: &[&str]) -> Self {
        modules.iter().fold(Self::over(origin(), routes), |config, m| config.with_built_module(m))
    }

    /// Routes over `origin` as upstream group `origin`, with no modules.
    pub fn over(origin: SocketAddr, routes: &str) -> Self {
        Self {
            main_extra: format!("[upstreams.origin]\nservers = [\"{origin}\"]\n"),
            routes: routes.to_string(),
            modules: Vec::new(),
            admin: false,
            admin_upload_mb: 2,
            server_extra: String::new(),
            modules_extra: String::new(),
        }
    }

    /// Name this node in `CDN-Loop`, `Via` and `Cache-Status`.
    pub fn with_node_id(mut self, id: &str) -> Self {
        self.server_extra.push_str(&format!("node_id = \"{id}\"\n"));
        self
    }

    pub fn with_admin(mut self) -> Self {
        self.admin = true;
        self
    }

    /// The admin API, taking uploads of up to `mb` MiB.
    pub fn with_admin_uploads_of(mut self, mb: u64) -> Self {
        self.admin_upload_mb = mb;
        self.with_admin()
    }

    /// One more key of the `[modules]` table, such as `keep_versions = 2`.
    pub fn with_modules_key(mut self, line: &str) -> Self {
        self.modules_extra.push_str(line);
        self.modules_extra.push('\n');
        self
    }

    pub fn with_main(mut self, extra: &str) -> Self {
        self.main_extra.push_str(extra);
        self
    }

    /// Also serve TLS (and HTTP/2) on `port`, with `cert.pem` and `key.pem` from `dir`.
    pub fn with_tls(self, port: u16, dir: &Path) -> Self {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        self.with_main(&format!(
            "\n[server.tls]\nlisten = \"127.0.0.1:{port}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ))
    }

    /// Add the built filter or fixture `name` (see [`wasm`]).
    pub fn with_built_module(self, name: &str) -> Self {
        self.with_module(name, std::fs::read(wasm(name)).unwrap())
    }

    pub fn with_module(mut self, name: &str, bytes: Vec<u8>) -> Self {
        self.modules.push((name.to_string(), bytes));
        self
    }

    /// Write the files into `dir`; returns the main config path.
    pub fn write(&self, dir: &Path, port: u16) -> PathBuf {
        self.write_with_admin(dir, port, free_port())
    }

    fn write_with_admin(&self, dir: &Path, port: u16, admin_port: u16) -> PathBuf {
        let modules = dir.join("modules");
        std::fs::create_dir_all(dir.join("routes")).unwrap();
        std::fs::create_dir_all(&modules).unwrap();
        for (name, bytes) in &self.modules {
            std::fs::write(modules.join(format!("{name}.wasm")), bytes).unwrap();
        }
        let main = format!(
            "routes = [\"routes/*.toml\"]\n\n[server]\nlisten = \"127.0.0.1:{port}\"\nthreads = 2\n{}\n\
             [modules]\ndir = \"modules\"\nstore = \"store\"\n{}\n{}{}",
            self.server_extra,
            self.modules_extra,
            self.main_extra,
            if self.admin {
                format!(
                    "\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_env = \"CASCADE_TEST_ADMIN_TOKEN\"\nmax_upload_mb = {}\n",
                    self.admin_upload_mb
                )
            } else {
                String::new()
            }
        );
        std::fs::write(dir.join("cascade.toml"), main).unwrap();
        std::fs::write(dir.join("routes/test.toml"), &self.routes).unwrap();
        dir.join("cascade.toml")
    }
}

/// A running `cascade serve`, killed on drop.
pub struct Proxy {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    /// Whether the config turns the admin API on (then start waits for it too).
    admin: bool,
    pub dir: tempfile::TempDir,
    /// What the proxy has written to stderr (its log) since it listened.
    log: Arc<Mutex<Vec<u8>>>,
}

/// The proxy exited instead of serving (or was stopped, not listening).
#[derive(Debug)]
pub struct StartFailure {
    pub status: std::process::ExitStatus,
    pub stderr: String,
}

impl StartFailure {
    /// Another socket had a port by the time the proxy bound it: caught by
    /// the proxy's own check, or by Pingora's bind after it.
    fn lost_its_port(&self) -> bool {
        self.stderr.contains(": cannot listen:") || self.stderr.contains("Failed to build listeners")
    }
}

/// Whether process `pid` holds a socket listening on `port`. A connect is
/// no proof: it could reach another process's listener on that port.
fn listens_on(pid: u32, port: u16) -> bool {
    let listening: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            let sockets = table.lines().skip(1).filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
                let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
                (*state == "0A" && local_port == port).then(|| format!("socket:[{inode}]"))
            });
            sockets.collect::<Vec<_>>()
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|to| listening.iter().any(|s| to.as_os_str() == s.as_str())))
}

impl Proxy {
    /// Start a proxy and wait until it accepts connections.
    pub fn start(config: &ProxyConfig) -> Self {
        Self::try_start(config).unwrap_or_else(|f| panic!("proxy failed to start: {f:?}"))
    }

    /// Start a proxy; `Err` if it exits before it accepts connections.
    pub fn try_start(config: &ProxyConfig) -> Result<Self, StartFailure> {
        // A port no test holds can still be taken between the pick and the
        // bind (a client connection's local port): then pick again.
        let mut attempts = 0;
        loop {
            match Self::try_start_on(config, free_port()) {
                Err(failure) if failure.lost_its_port() && attempts < 3 => attempts += 1,
                started => return started,
            }
        }
    }

    /// Start a proxy listening on `port` (for a config that names its own port).
    pub fn start_on(config: &ProxyConfig, port: u16) -> Self {
        Self::try_start_on(config, port).unwrap_or_else(|f| panic!("proxy failed to start: {f:?}"))
    }

    /// Serve `dir/cascade.toml`, written by the test, which listens on
    /// `port` and has its admin API on `admin_port`.
    pub fn start_in(dir: tempfile::TempDir, port: u16, admin_port: u16) -> Self {
        Self::spawn(dir, port, admin_port, true).unwrap_or_else(|f| panic!("proxy failed to start: {f:?}"))
    }

    fn try_start_on(config: &ProxyConfig, port: u16) -> Result<Self, StartFailure> {
        let dir = tempfile::tempdir().unwrap();
        let admin_port = free_port();
        config.write_with_admin(dir.path(), port, admin_port);
        Self::spawn(dir, port, admin_port, config.admin)
    }

    /// Stop this proxy and start a new one on the same files, store and ports.
    pub fn restart(mut self) -> Self {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::spawn(dir, self.port, self.admin_port, self.admin).unwrap_or_else(|f| panic!("restart failed: {f:?}"))
    }

    fn spawn(dir: tempfile::TempDir, port: u16, admin_port: u16, admin: bool) -> Result<Self, StartFailure> {
        let path = dir.path().join("cascade.toml");
        let mut child = Command::new(cascade_bin())
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .env("CASCADE_TEST_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cascade");
        let deadline = Instant::now() + Duration::from_secs(60);
        let pid = child.id();
        loop {
            if Instant::now() >= deadline {
                // Up but not listening: Pingora's bind failed in a task
                // (the port was taken after the proxy's own check).
                let _ = child.kill();
            }
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
                return Err(StartFailure { status, stderr });
            }
            // Pingora binds each service's listener on its own: wait for both.
            let listening = |port: u16| listens_on(pid, port);
            if listening(port) && (!admin || listening(admin_port)) {
                // Read stderr in the background, so the proxy never blocks on
                // it and a test can read the log.
                let log = Arc::new(Mutex::new(Vec::new()));
                let (mut stderr, sink) = (child.stderr.take().unwrap(), log.clone());
                std::thread::spawn(move || {
                    let mut chunk = [0u8; 8192];
                    loop {
                        match stderr.read(&mut chunk) {
                            Ok(0) => break,
                            Ok(n) => sink.lock().unwrap().extend_from_slice(&chunk[..n]),
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(_) => break,
                        }
                    }
                });
                return Ok(Self { child, port, admin_port, admin, dir, log });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send a signal to the proxy process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (up to a minute) for the proxy process to exit on its own.
    pub fn wait_for_exit(&mut self) -> std::process::ExitStatus {
        exit_of(&mut self.child)
    }

    /// Whether the proxy process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Call the admin API with the test token (or `token`, when given).
    pub fn admin(&self, method: &str, path: &str, body: &[u8], token: Option<&str>) -> Reply {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        let auth = format!("Bearer {}", token.unwrap_or(ADMIN_TOKEN));
        send_bytes(method, &url, &[("authorization", &auth)], body)
    }

    /// `/metrics`, once it shows every one of `lines`. Metrics are recorded
    /// in the logging phase, after the client already has its response, so
    /// this polls (for up to 30 s) instead of reading once.
    pub fn wait_for_metrics(&self, lines: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.admin("GET", "/metrics", b"", None).body;
            if lines.iter().all(|line| text.contains(line)) {
                return text;
            }
            assert!(Instant::now() < deadline, "metrics never showed {lines:?}:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log line that holds every one of `parts`, once it is written
    /// (the proxy logs after the client has its response: up to 30 s).
    pub fn wait_for_log_line(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.complete_log_lines();
            if let Some(line) = log.lines().find(|line| parts.iter().all(|part| line.contains(part))) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "no log line with {parts:?}:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the access log line of request `id`, written after the
    /// response: every line logged for the request before it is in by then.
    pub fn wait_for_access_log(&self, id: &str) {
        self.wait_for_log_line(&["cascade::access", &format!("\"request_id\":\"{id}\"")]);
    }

    /// The log lines written so far that hold `part`.
    pub fn log_lines(&self, part: &str) -> Vec<String> {
        self.complete_log_lines().lines().filter(|line| line.contains(part)).map(str::to_string).collect()
    }

    /// The log up to its last newline: a line still being written is left out.
    fn complete_log_lines(&self) -> String {
        // Copied out, so the reader thread waits for a copy, not a search.
        let log = self.log.lock().unwrap().clone();
        let end = log.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        String::from_utf8_lossy(&log[..end]).into_owned()
    }

    /// GET `path` with these headers.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        send("GET", &self.url(path), headers)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response, whatever its status.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    /// The body as JSON (the echo origin's answer, or an error reply).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build())
}

/// Send a request with a real HTTP/1.1 client and return the response.
pub fn send(method: &str, url: &str, headers: &[(&str, &str)]) -> Reply {
    send_bytes(method, url, headers, &[])
}

/// Send a request with a body.
pub fn send_bytes(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut request = agent().request(method, url);
    if method == "PUT" {
        // An upload answers once it has compiled: a Python component takes
        // a minute or more in a debug build on a busy two-core machine.
        request = request.timeout(Duration::from_secs(600));
    }
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let result = if body.is_empty() && method != "PUT" { request.call() } else { request.send_bytes(body) };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .flat_map(|name| response.all(&name).into_iter().map(|v| (name.clone(), v.to_string())).collect::<Vec<_>>())
        .collect();
    let body = response.into_string().unwrap_or_default();
    Reply { status, headers, body }
}

/// Send raw bytes (for requests a well-behaved client would never send) and
/// return the status and body of the response. The request should carry
/// `Connection: close`.
pub fn send_raw(port: u16, request: &str) -> (u16, String) {
    let (status, response) = send_raw_bytes(port, request.as_bytes());
    let status = status.unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Send raw bytes and read until the proxy closes: the status, if the answer
/// is HTTP at all, and the whole response. A write error is ignored, because
/// the proxy may refuse and close before it has read a huge request.
pub fn send_raw_bytes(port: u16, request: &[u8]) -> (Option<u16>, String) {
    use std::io::Write;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ").and_then(|s| s.get(..3)).and_then(|s| s.parse().ok());
    (status, text)
}

/// Wait until `f` holds, checking every 50 ms; fail the test after `within`.
pub fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what} did not happen within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait until something listens on `port`.
pub fn wait_for_port(port: u16) {
    eventually(&format!("a listener on port {port}"), Duration::from_secs(60), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// The value of the series `name` (with its labels, if any) in `/metrics` text.
pub fn metric_value(text: &str, name: &str) -> i64 {
    let line =
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).unwrap_or_else(|| panic!("no {name}"));
    line.trim().parse().unwrap_or_else(|e| panic!("{name} {line:?}: {e}"))
}

/// The echo origin's request number that produced this body.
pub fn origin_count(reply: &Reply) -> u64 {
    reply.json()["count"].as_u64().unwrap_or_else(|| panic!("no count in {}", reply.body))
}

/// A raw origin: for each connection it reads the whole request (its
/// `Content-Length` body too), then hands the stream to `answer`, which
/// writes what it likes (a broken answer, say) and lets the connection close.
pub fn raw_origin(answer: impl Fn(&mut TcpStream) + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = Vec::new();
            let mut buf = [0u8; 65536];
            while !whole_request(&request) {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            answer(&mut stream);
        }
    });
    addr
}

/// Whether `request` holds a whole head and as much body as its
/// `Content-Length` says.
fn whole_request(request: &[u8]) -> bool {
    let text = String::from_utf8_lossy(request);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= length
}

/// Wait up to a minute for `child` to exit; its status.
pub fn exit_of(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "cascade did not exit within a minute");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Run `cascade` with these arguments to completion.
pub fn run_cascade(args: &[&str]) -> Output {
    Command::new(cascade_bin()).args(args).output().expect("run cascade")
}

/// A nameserver on a loopback UDP port that answers A questions for one
/// name with the addresses a test sets, AAAA questions with none, and every
/// question with SERVFAIL while it is told to fail.
pub struct DnsServer {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Option<Vec<std::net::Ipv4Addr>>>>,
}

impl DnsServer {
    pub fn start(name: &str, ip: std::net::Ipv4Addr) -> Self {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(Some(vec![ip])));
        let serving = answer.clone();
        let mut wire_name: Vec<u8> = Vec::new();
        for label in name.split('.') {
            wire_name.push(label.len() as u8);
            wire_name.extend_from_slice(label.as_bytes());
        }
        wire_name.push(0);
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { return };
                let question_end = 12 + wire_name.len() + 4;
                if n < question_end || buf[12..12 + wire_name.len()] != wire_name[..] {
                    continue;
                }
                let qtype = u16::from_be_bytes([buf[question_end - 4], buf[question_end - 3]]);
                let mut reply = buf[..question_end].to_vec();
                let ips = serving.lock().unwrap().clone();
                // An answer, recursion available; SERVFAIL when told to fail.
                reply[2..4].copy_from_slice(if ips.is_some() { &[0x81, 0x80] } else { &[0x81, 0x82] });
                reply[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
                let records = ips.filter(|_| qtype == 1).unwrap_or_default();
                reply[7] = records.len() as u8;
                for ip in records {
                    reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                    reply.extend_from_slice(&ip.octets());
                }
                let _ = socket.send_to(&reply, from);
            }
        });
        Self { addr, answer }
    }

    /// Answer with `ips` from now on; `None`: fail every question.
    pub fn answer(&self, ips: Option<&[std::net::Ipv4Addr]>) {
        *self.answer.lock().unwrap() = ips.map(<[_]>::to_vec);
    }
}

/// The harness's readiness check tells a process's own listener from
/// another process's on the same port.
#[test]
fn readiness_tells_whose_listener_a_port_is() {
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    assert!(listens_on(std::process::id(), port));
    let mut other = Command::new("sleep").arg("30").spawn().unwrap();
    assert!(!listens_on(other.id(), port), "another process's listener counted as its own");
    let _ = other.kill();
    let _ = other.wait();
    drop(held);
    assert!(!listens_on(std::process::id(), port), "a closed listener still counts");
}
