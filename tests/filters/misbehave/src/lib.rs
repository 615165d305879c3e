//! A test fixture: misbehaves in the phase and the way its config says, so the
//! end-to-end suite can check that only the offending request is hurt.

use cascade_filter::{Filter, Reply, Request, Response, Verdict, export_filter};
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
    /// Allocate without bound; only the memory cap stops it.
    Alloc,
    /// Answer the request with 418 (request phase only).
    Respond,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    on_request: Behaviour,
    on_response: Behaviour,
    /// Only misbehave when the request carries `x-misbehave-trigger`.
    only_when_triggered: bool,
    /// Read the `host` header this many times (to measure one host call).
    header_reads: u32,
}

pub struct Misbehave {
    config: Config,
    triggered: bool,
}

fn act(behaviour: Behaviour) {
    match behaviour {
        Behaviour::Panic => panic!("misbehave: asked to panic"),
        Behaviour::Loop => {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Behaviour::Alloc => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Behaviour::Pass | Behaviour::Respond => {}
    }
}

impl Filter for Misbehave {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.on_response == Behaviour::Respond {
            return Err("on_response cannot be \"respond\"".into());
        }
        Ok(Self { config, triggered: true })
    }

    fn on_request(&mut self, req: &Request) -> Verdict {
        for _ in 0..self.config.header_reads {
            std::hint::black_box(req.header("host"));
        }
        self.triggered = !self.config.only_when_triggered || req.header("x-misbehave-trigger").is_some();
        if !self.triggered {
            return Verdict::Continue;
        }
        act(self.config.on_request);
        if self.config.on_request == Behaviour::Respond {
            return Verdict::Respond(Reply::new(418).header("x-misbehave", "responded").body("short and stout"));
        }
        req.set_header("x-misbehave", "request").expect("valid header");
        Verdict::Continue
    }

    fn on_response(&mut self, resp: &Response) {
        if self.triggered {
            act(self.config.on_response);
            resp.add_header("x-misbehave", "response").expect("valid header");
        }
    }
}

export_filter!(Misbehave);
