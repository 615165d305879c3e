//! The Wasm host: filter modules, their instances, and the chain that runs them.
//!
//! ```text
//!  start-up / reload                        per request
//!  ───────────────────                      ──────────────────────────────────────────
//!  *.wasm ─► ModuleRegistry                 FilterChain::run_request
//!            (validate, compile once,         for each link, in chain order:
//!             InstancePre per module)           fresh Store + pooled instance
//!                      │                        (or a parked one, if reused)
//!                      │                        deadline ─► on-request ─► verdict
//!                      │                        (+ staged response edits; an instance
//!                      │                         with no on-response is released)
//!                      ▼                    InFlightChain::run_response (reverse order:
//!            FilterChain per route            staged edits, then on-response on the
//!                                             same instances) ─► dropped or parked
//! ```
//!
//! * [`runtime`] owns the single `Engine` (pooling allocator, copy-on-write
//!   memory, epoch interruption) and the epoch ticker that enforces deadlines.
//! * [`module`] validates and compiles components.
//! * [`host`] implements the `cascade:filter` imports for one instance.
//! * [`chain`] runs a route's chain and applies each link's failure policy.
//! * [`reuse`] keeps instances between requests for entries that opt in.
//! * [`breaker`] switches off a chain entry that keeps failing.

pub mod breaker;
pub mod capabilities;
pub mod chain;
pub mod host;
pub mod module;
pub mod reuse;
pub mod runtime;
pub mod store;

/// Host bindings for the `filter` world in `wit/`.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "filter",
        // Calls are async so that WASI's blocking stream operations (a guest
        // printing a panic message, say) await instead of blocking a Pingora
        // worker. Cascade's own imports stay synchronous and cheap.
        exports: { default: async },
        // A fetch waits on the network: it awaits, and the worker serves
        // other requests meanwhile.
        imports: { "cascade:filter/outbound.fetch": async },
        with: {
            "cascade:filter/types.request": super::host::RequestHandle,
            "cascade:filter/types.response": super::host::ResponseHandle,
        },
    });
}

pub use capabilities::Capabilities;
pub use chain::{ChainLink, FilterChain, FilterFailure, FilterTiming, InFlightChain, RequestOutcome};
pub use host::RequestHead;
pub use module::{FilterModule, ModuleError, ModuleRegistry};
pub use runtime::FilterRuntime;
pub use store::ModuleStore;
