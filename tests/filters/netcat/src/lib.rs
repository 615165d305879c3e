//! A test fixture that tries to open a TCP connection, which links in
//! `wasi:sockets`. The host links it (language runtimes import sockets
//! whether they use them or not) but refuses every socket: the fixture
//! answers with what its attempt got, so a test can see the refusal.

use cascade_filter::{Filter, Reply, Request, Verdict, export_filter};

#[derive(Clone)]
pub struct Netcat;

impl Filter for Netcat {
    type Config = serde::de::IgnoredAny;

    fn new(_config: Self::Config) -> Result<Self, String> {
        Ok(Netcat)
    }

    fn on_request(&mut self, req: &Request) -> Verdict {
        let Some(target) = req.header("x-connect") else {
            return Verdict::Continue;
        };
        let outcome = match std::net::TcpStream::connect(target) {
            Ok(_) => "connected".to_string(),
            Err(e) => format!("refused: {e} ({:?})", e.kind()),
        };
        Verdict::Respond(Reply::new(200).body(outcome))
    }
}

export_filter!(Netcat);
