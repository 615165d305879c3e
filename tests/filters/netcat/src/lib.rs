//! A test fixture that imports a capability the host does not grant: it
//! tries to open a TCP connection, which links in `wasi:sockets`. The host
//! must refuse to load it.

use cascade_filter::{Filter, Request, Verdict, export_filter};

#[derive(Clone)]
pub struct Netcat;

impl Filter for Netcat {
    type Config = serde::de::IgnoredAny;

    fn new(_config: Self::Config) -> Result<Self, String> {
        Ok(Netcat)
    }

    fn on_request(&mut self, req: &Request) -> Verdict {
        if let Some(target) = req.header("x-connect") {
            let _ = std::net::TcpStream::connect(target);
        }
        Verdict::Continue
    }
}

export_filter!(Netcat);
