//! A test fixture: misbehaves in the phase and the way its config says, so the
//! end-to-end suite can check that only the offending request is hurt.

use cascade_filter::{
    FetchError, Filter, OutboundRequest, Reply, Request, Response, Verdict, export_filter, jwt, outbound, rate_limit,
};
use serde::Deserialize;

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Mark the message with `x-misbehave` and carry on.
    #[default]
    Pass,
    /// Panic, which traps the instance.
    Panic,
    /// Spin forever; only the CPU deadline stops it.
    Loop,
    /// Spin for `spin_ms` of wall-clock time, then carry on.
    Spin,
    /// Allocate without bound; only the memory cap stops it.
    Alloc,
    /// Recurse without bound; only the stack limit stops it.
    Recurse,
    /// Set a 4 MiB header value (the host refuses it; the filter then panics).
    GiantHeader,
    /// Call set-header 100,000 times with distinct names, ignoring refusals.
    ManyHeaders,
    /// Stage 100,000 distinct response headers, ignoring refusals (request
    /// phase only).
    ManyStagedHeaders,
    /// Stage 1,000 distinct response headers of 1 KiB each, ignoring
    /// refusals (request phase only).
    LargeStagedHeaders,
    /// Call host functions with garbage: an unknown rate-limit policy, a
    /// malformed token, an invalid header name. Errors are ignored.
    GarbageCalls,
    /// Answer the request with `reply_status` (418 unless set), with three
    /// headers the host drops among its own: two invalid, and a framing one
    /// (`transfer-encoding`) only the host may write (request phase only).
    Respond,
    /// Answer with a 2 MiB body, past the host's reply limit (request phase only).
    GiantReply,
    /// Leak 1 MiB and carry on: harmless in a fresh instance, fatal in time
    /// to one that is reused without limit.
    Leak,
    /// Use std's stdio, environment and clock: write 3 MiB to stdout and a
    /// line to stderr, read stdin to its end, ask whether stdout is a
    /// terminal, count the environment variables, sleep 20 ms; say what came
    /// of it in `x-misbehave-stdio` and carry on.
    Stdio,
    /// Call `std::process::exit(0)`.
    Exit,
    /// Log one line of 1 MiB, then 1,000 numbered lines ("flood 1" to
    /// "flood 1000"), and carry on.
    LogFlood,
    /// Edit the message, then panic: on the request, set the path to
    /// `/edited-by-misbehave`, remove `x-client-header` and set
    /// `x-misbehave-edited`; on the response, set the status to 299 and
    /// `x-misbehave-edited`.
    EditThenPanic,
    /// Sleep `spin_ms` (`std::thread::sleep`: a WASI pollable the host waits
    /// on, with no guest code running), then carry on.
    Sleep,
    /// Fetch `/` from upstream group `fetch_from` nine times, one past the
    /// host's limit per call, and say in `x-misbehave-fetched` how each
    /// went (the status, `limit`, or the error), then carry on (request
    /// phase only).
    FetchMany,
    /// Fetch `/` from `fetch_from`, asking the echo origin to take
    /// `spin_ms` to answer, then spin forever (request phase only).
    FetchThenLoop,
    /// Fetch `/` from `fetch_from`, then sleep `spin_ms` (request phase
    /// only): the sleep is the call's own wait, which its deadline bounds.
    FetchThenSleep,
}

/// Requests this instance has seen: always 1 in a fresh instance.
static REQUESTS_SEEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Times `Filter::new` ran in this instance: once, however many requests.
static BUILDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    on_request: Behaviour,
    on_response: Behaviour,
    /// Only misbehave when the request carries `x-misbehave-trigger`.
    only_when_triggered: bool,
    /// Panic in `new`, that is in the config check at load.
    panic_in_new: bool,
    /// How long `spin` spins and `sleep` sleeps.
    spin_ms: u64,
    /// The status `respond` answers with; 0 means 418.
    reply_status: u16,
    /// Read the `host` header this many times (to measure one host call).
    header_reads: u32,
    /// Report on the response, as `x-instance-requests`, how many requests
    /// this instance has seen, as `x-value-requests`, how many its filter
    /// value has seen, and as `x-value-builds`, how often `new` ran in it.
    count_requests: bool,
    /// Stage `x-misbehave-staged: request` for the response before acting in
    /// on-request, and report on the response, as `x-misbehave-saw-staged`,
    /// whether on-response saw it.
    stage: bool,
    /// The upstream group `fetch-many` and `fetch-then-loop` fetch from.
    fetch_from: String,
}

#[derive(Clone)]
pub struct Misbehave {
    config: Config,
    triggered: bool,
    /// Requests this filter value has seen: 1, since every request gets its
    /// own clone of the value `new` built, even in a reused instance.
    requests_seen_by_value: u32,
}

/// Recurse until the stack runs out. The base case is unreachable in
/// practice; it keeps the function from being an obvious infinite loop.
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    if frame[0] == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + frame[1]
}

/// Misbehave in a way that needs no message; `set` edits the message's headers.
fn act(behaviour: Behaviour, spin_ms: u64, set: impl Fn(&str, &str) -> Result<(), cascade_filter::EditError>) {
    match behaviour {
        Behaviour::Panic => panic!("misbehave: asked to panic"),
        Behaviour::Loop => {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Behaviour::Spin => {
            let until = std::time::Instant::now() + std::time::Duration::from_millis(spin_ms);
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        Behaviour::Alloc => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Behaviour::Recurse => {
            std::hint::black_box(recurse(0));
        }
        Behaviour::GiantHeader => {
            let value = "x".repeat(4 << 20);
            set("x-giant", &value).expect("the host refuses a giant header");
        }
        Behaviour::ManyHeaders => {
            for i in 0..100_000 {
                let _ = set(&format!("x-many-{i}"), "1");
            }
        }
        Behaviour::GarbageCalls => {
            let _ = rate_limit::check("no-such-policy", "key", 1);
            let _ = rate_limit::check("no-such-policy", "key", 0);
            let _ = jwt::verify("not a token", "no-such-keyset");
            let _ = jwt::verify("a.b.c", "no-such-keyset");
            let _ = set("bad header name", "value");
            let _ = set("x-ok", "bad\r\nvalue");
        }
        Behaviour::Leak => {
            std::hint::black_box(Vec::leak(vec![1u8; 1 << 20]));
        }
        Behaviour::Stdio => {
            use std::io::{IsTerminal, Read, Write};
            // More than one write permit, so the write goes out in parts.
            let stdout = std::io::stdout().write_all(&vec![b'x'; 3 << 20]).and_then(|()| std::io::stdout().flush());
            let stderr = writeln!(std::io::stderr(), "misbehave: a line to stderr");
            let mut input = Vec::new();
            let stdin = match std::io::stdin().read_to_end(&mut input) {
                Ok(n) => n.to_string(),
                Err(e) => e.to_string(),
            };
            let asleep = std::time::Instant::now();
            std::thread::sleep(std::time::Duration::from_millis(20));
            let report = format!(
                "stdout={} stderr={} stdin={stdin} terminal={} env={} slept={}",
                stdout.is_ok(),
                stderr.is_ok(),
                std::io::stdout().is_terminal(),
                std::env::vars().count(),
                asleep.elapsed() >= std::time::Duration::from_millis(20)
            );
            set("x-misbehave-stdio", &report).expect("a short header");
        }
        Behaviour::Exit => std::process::exit(0),
        Behaviour::EditThenPanic => {
            set("x-misbehave-edited", "yes").expect("a short header");
            panic!("misbehave: asked to panic after editing");
        }
        Behaviour::Sleep => std::thread::sleep(std::time::Duration::from_millis(spin_ms)),
        Behaviour::LogFlood => {
            cascade_filter::log::info(&"y".repeat(1 << 20));
            for n in 1..=1000 {
                cascade_filter::log::info(&format!("flood {n}"));
            }
        }
        Behaviour::Pass
        | Behaviour::Respond
        | Behaviour::GiantReply
        | Behaviour::ManyStagedHeaders
        | Behaviour::LargeStagedHeaders
        | Behaviour::FetchMany
        | Behaviour::FetchThenLoop
        | Behaviour::FetchThenSleep => {}
    }
}

impl Filter for Misbehave {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        assert!(!config.panic_in_new, "misbehave: asked to panic in new");
        if matches!(config.on_response, Behaviour::Respond | Behaviour::GiantReply) {
            return Err("on_response cannot answer the request".into());
        }
        if matches!(config.on_response, Behaviour::ManyStagedHeaders | Behaviour::LargeStagedHeaders) {
            return Err("on_response cannot stage response headers".into());
        }
        BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Self { config, triggered: true, requests_seen_by_value: 0 })
    }

    fn on_request(&mut self, req: &Request) -> Verdict {
        REQUESTS_SEEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.requests_seen_by_value += 1;
        for _ in 0..self.config.header_reads {
            std::hint::black_box(req.header("host"));
        }
        if self.config.stage {
            req.set_response_header("x-misbehave-staged", "request").expect("a short header");
        }
        self.triggered = !self.config.only_when_triggered || req.header("x-misbehave-trigger").is_some();
        if !self.triggered {
            return Verdict::Continue;
        }
        if self.config.on_request == Behaviour::EditThenPanic {
            req.set_path("/edited-by-misbehave").expect("a valid path");
            req.remove_header("x-client-header");
        }
        let fetch = |request: OutboundRequest| outbound::fetch(&self.config.fetch_from, request);
        match self.config.on_request {
            Behaviour::FetchMany => {
                let outcomes: Vec<String> = (0..9)
                    .map(|_| match fetch(OutboundRequest::new("GET", "/")) {
                        Ok(answer) => answer.status.to_string(),
                        Err(FetchError::LimitExceeded(_)) => "limit".into(),
                        Err(e) => e.to_string(),
                    })
                    .collect();
                req.set_header("x-misbehave-fetched", &outcomes.join(",")).expect("a short header");
            }
            Behaviour::FetchThenLoop => {
                let delay = self.config.spin_ms.to_string();
                let answer = fetch(OutboundRequest::new("GET", "/").with_header("x-echo-delay-ms", &delay));
                assert_eq!(answer.map(|a| a.status), Ok(200), "misbehave: the fetch before the loop");
                act(Behaviour::Loop, 0, |_, _| Ok(()));
            }
            Behaviour::FetchThenSleep => {
                let answer = fetch(OutboundRequest::new("GET", "/"));
                assert_eq!(answer.map(|a| a.status), Ok(200), "misbehave: the fetch before the sleep");
                act(Behaviour::Sleep, self.config.spin_ms, |_, _| Ok(()));
            }
            _ => {}
        }
        act(self.config.on_request, self.config.spin_ms, |name, value| req.set_header(name, value));
        match self.config.on_request {
            Behaviour::Respond => {
                // With three headers the host drops: a name that is no
                // token, a value with a line break, and framing of its own.
                let status = if self.config.reply_status == 0 { 418 } else { self.config.reply_status };
                let reply = Reply::new(status).header("x-misbehave", "responded").header("bad name", "1");
                let reply = reply.header("x-bad-value", "a\r\nb").header("Transfer-Encoding", "chunked");
                return Verdict::Respond(reply.body("short and stout"));
            }
            Behaviour::GiantReply => return Verdict::Respond(Reply::new(200).body(vec![b'x'; 2 << 20])),
            Behaviour::ManyStagedHeaders => {
                for i in 0..100_000 {
                    let _ = req.set_response_header(&format!("x-staged-{i}"), "1");
                }
            }
            Behaviour::LargeStagedHeaders => {
                let value = "x".repeat(1024);
                for i in 0..1_000 {
                    let _ = req.set_response_header(&format!("x-staged-{i}"), &value);
                }
            }
            _ => {}
        }
        // After 100,000 header edits the host's header cap refuses even this.
        if let Err(e) = req.set_header("x-misbehave", "request")
            && self.config.on_request != Behaviour::ManyHeaders
        {
            panic!("{e}");
        }
        Verdict::Continue
    }

    fn on_response(&mut self, resp: &Response) {
        if self.config.stage {
            let saw = if resp.header("x-misbehave-staged").is_some() { "yes" } else { "no" };
            resp.set_header("x-misbehave-saw-staged", saw).expect("a short header");
        }
        if self.config.count_requests {
            let seen = REQUESTS_SEEN.load(std::sync::atomic::Ordering::Relaxed);
            resp.set_header("x-instance-requests", &seen.to_string()).expect("a short header");
            let by_value = self.requests_seen_by_value.to_string();
            resp.set_header("x-value-requests", &by_value).expect("a short header");
            let builds = BUILDS.load(std::sync::atomic::Ordering::Relaxed).to_string();
            resp.set_header("x-value-builds", &builds).expect("a short header");
        }
        if self.triggered {
            if self.config.on_response == Behaviour::EditThenPanic {
                resp.set_status(299).expect("a valid status");
            }
            act(self.config.on_response, self.config.spin_ms, |name, value| resp.set_header(name, value));
            // Staged headers can fill the response to the header cap as well.
            if let Err(e) = resp.add_header("x-misbehave", "response")
                && self.config.on_response != Behaviour::ManyHeaders
                && self.config.on_request != Behaviour::ManyStagedHeaders
            {
                panic!("{e}");
            }
        }
    }
}

export_filter!(Misbehave);
