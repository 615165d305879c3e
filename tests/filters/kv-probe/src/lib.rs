//! A test fixture that reads and writes the host's key-value stores as each
//! request's `x-kv` header asks, and answers with the outcome:
//!
//! - `get <store> <key>`, `delete <store> <key>`
//! - `set <store> <key> <value> [ttl-ms]`
//! - `incr <store> <key> <delta> [ttl-ms]`
//!
//! With `{"check_writes": "<store>"}` its `check-config` sets `checked` in
//! that store, which the host checks and does not make.

use std::time::Duration;

use cascade_filter::{Filter, KvError, Reply, Request, Verdict, export_filter, kv};

#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    check_writes: Option<String>,
}

#[derive(Clone)]
pub struct KvProbe(Config);

impl Filter for KvProbe {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(KvProbe(config))
    }

    fn check(&self) -> Result<(), String> {
        match &self.0.check_writes {
            Some(store) => kv::set(store, "checked", "1", None).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    fn on_request(&mut self, req: &Request) -> Verdict {
        let Some(op) = req.header("x-kv") else {
            return Verdict::Continue;
        };
        let words: Vec<&str> = op.split(' ').collect();
        let ttl = |at: usize| words.get(at).map(|ms| Duration::from_millis(ms.parse().unwrap_or(0)));
        let outcome: Result<String, KvError> = match words.as_slice() {
            ["get", store, key] => kv::get(store, key).map(|v| format!("{v:?}")),
            ["delete", store, key] => kv::delete(store, key).map(|deleted| deleted.to_string()),
            ["set", store, key, value, ..] => kv::set(store, key, value, ttl(4)).map(|()| "ok".into()),
            ["incr", store, key, delta, ..] => match delta.parse() {
                Ok(delta) => kv::increment(store, key, delta, ttl(4)).map(|sum| sum.to_string()),
                Err(_) => return Verdict::Respond(Reply::new(400).body("the delta is not a number")),
            },
            _ => return Verdict::Respond(Reply::new(400).body("unknown operation")),
        };
        Verdict::Respond(match outcome {
            Ok(text) => Reply::new(200).body(text),
            Err(e) => Reply::new(409).body(format!("{e:?}: {e}")),
        })
    }
}

export_filter!(KvProbe);
