//! Cascade: a CDN edge proxy that runs a chain of WebAssembly component
//! filters on every request, in front of upstream groups.
//!
//! ```text
//! client ─► accept (Pingora) ─► route ─► filters: on-request, in order ─┐
//!                                         │ a filter may answer early    │
//!                                         ▼                              ▼
//! client ◄─ log ◄─ filters: on-response, reverse order ◄─ cache ◄─ upstream tiers
//! ```
//!
//! Follow a request through the modules in this order: [`service`] (the only
//! place the phases are wired), [`route`], [`filters`], [`cache`], [`upstream`]. Start-up
//! is [`server`], shutdown [`drain`]; configuration is [`config`], and [`snapshot`] is the
//! consistent version of both that each request pins.

pub mod admin;
pub mod admin_client;
pub mod cache;
pub mod config;
pub mod control;
pub mod demo_origin;
pub mod drain;
pub mod filters;
pub mod metrics;
pub mod route;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod upstream;
