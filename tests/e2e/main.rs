//! Black-box tests: the real `cascade` binary, real compiled filters, a real
//! origin on an ephemeral port and a real HTTP client.

mod cache;
mod cascade;
mod edge_filters;
mod failure_policy;
mod foundation;
mod hostile_filters;
mod hostile_http;
mod hot_swap;
mod kv;
mod outbound;
mod reuse;
mod support;
