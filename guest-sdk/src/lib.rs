//! Write Cascade edge filters in Rust.
//!
//! A filter is a type that implements [`Filter`], built for `wasm32-wasip2` and
//! exported with [`export_filter!`]. [`Filter::new`] builds the filter from its
//! config once per instance, before any request; every request gets its own
//! clone of that value, which sees [`Filter::on_request`] and then
//! [`Filter::on_response`] (unless the filter has none: see there) and is
//! dropped. What a request changes in its
//! clone never reaches another request, unless the clone shares it: an `Rc`
//! or `Arc` field with interior mutability is the same cell in every clone.
//! The instance around it is fresh for every request, unless the route's
//! chain entry sets `reuse_instances = true`; then statics (and shared cells)
//! live on from one request to the next, so a filter meant for reuse keeps
//! nothing in them that belongs to a request.
//!
//! ```
//! use cascade_filter::{export_filter, Filter, Reply, Request, Verdict};
//!
//! #[derive(Clone, serde::Deserialize)]
//! struct Config { header: String }
//!
//! #[derive(Clone)]
//! struct RequireHeader(Config);
//!
//! impl Filter for RequireHeader {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self, String> { Ok(Self(config)) }
//!     fn on_request(&mut self, req: &Request) -> Verdict {
//!         match req.header(&self.0.header) {
//!             Some(_) => Verdict::Continue,
//!             None => Verdict::Respond(Reply::new(400).body("missing header")),
//!         }
//!     }
//! }
//!
//! export_filter!(RequireHeader);
//! ```
//!
//! Off `wasm32`, [`Request`] and [`Response`] are backed by an in-memory mock
//! host, so a filter's unit tests run under plain `cargo test`; see
//! [`instantiate`] and the builder methods on [`Request`] and [`Response`].

use serde::de::DeserializeOwned;

pub mod allocator;
mod capabilities;
pub mod client;
pub mod path;
mod verdict;
pub use capabilities::{CheckError, Decision, FetchError, KvError, OutboundRequest, OutboundResponse, VerifyError};
pub use verdict::{EditError, Reply, Verdict};

// wasi-libc's WASI 0.2 stdio exists only on wasip2.
#[cfg(all(target_os = "wasi", target_env = "p2", feature = "wasi-stdio-stubs"))]
#[doc(hidden)]
pub mod wasi_stdio;
#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics"), feature = "allocator"))]
#[global_allocator]
static ALLOCATOR: allocator::SizeClasses = allocator::SizeClasses::new();

#[cfg(target_arch = "wasm32")]
pub use wasm::{Request, Response, jwt, kv, log, outbound, rate_limit, regex, upstreams};

#[cfg(not(target_arch = "wasm32"))]
pub mod mock;
#[cfg(not(target_arch = "wasm32"))]
pub use mock::{Request, Response, jwt, kv, log, outbound, rate_limit, regex, upstreams};

/// A filter: per-route policy that runs on every request of its routes.
///
/// Every method but [`Filter::new`] has a default, so a filter overrides only
/// the phases it cares about. A filter is `Clone` because each request gets a
/// clone of the value `new` built: the config is parsed and checked once per
/// instance, not once per request.
pub trait Filter: Sized + Clone + 'static {
    /// This filter's settings: the chain entry's `config` table in the route
    /// file. Use `#[serde(default)]` for optional keys.
    type Config: DeserializeOwned;

    /// Build the filter from its config, once per instance; each request
    /// starts from a clone of the result. Return an error for a config that
    /// parses but makes no sense; the host reports it when the route is loaded.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Check, once when the route is loaded (the host's `check-config`),
    /// what `new` cannot see alone: that the keysets, policies and the like
    /// the config names exist in the host. It does not run per request. An
    /// error refuses the config, as one from `new` does.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// Inspect or edit the request, then continue or answer it.
    fn on_request(&mut self, _req: &Request) -> Verdict {
        Verdict::Continue
    }

    /// Inspect or edit the response head on its way to the client. Without
    /// it, the host stops calling the filter on responses after the first,
    /// and releases its instance as soon as `on_request` returns. (So does an
    /// `on_response` that only calls this default and makes no host call: it
    /// has nothing to do.) A filter that only sets, adds or removes response
    /// headers needs none: [`Request::set_response_header`] and its kin stage
    /// the edits from `on_request`.
    fn on_response(&mut self, _resp: &Response) {
        #[cfg(target_arch = "wasm32")]
        wasm::default_on_response_ran();
    }
}

/// Build a filter from config JSON as the host does: parse into
/// `F::Config`, then [`Filter::new`]. (In the host each request then gets a
/// clone of the result.) The error names the config problem.
pub fn instantiate<F: Filter>(config_json: &str) -> Result<F, String> {
    let config: F::Config = serde_json::from_str(config_json).map_err(|e| format!("invalid config: {e}"))?;
    F::new(config)
}

/// Check config JSON as the host does when a route is loaded: [`instantiate`],
/// then [`Filter::check`] against the (mock) host.
pub fn check_config<F: Filter>(config_json: &str) -> Result<(), String> {
    let filter = instantiate::<F>(config_json)?;
    #[cfg(not(target_arch = "wasm32"))]
    return mock::rate_limit::while_checking_config(|| filter.check());
    #[cfg(target_arch = "wasm32")]
    filter.check()
}

/// Export a [`Filter`] implementation as this component's filter.
///
/// Use it once per crate. Off `wasm32` it only checks that the type is a
/// [`Filter`], so the crate still builds for native unit tests.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct CascadeFilterExport;
            impl $crate::__private::Guest for CascadeFilterExport {
                fn check_config() -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::check_config::<$filter>()
                }
                fn on_request(request: &$crate::__private::RequestHandle) -> $crate::__private::VerdictRepr {
                    $crate::__private::on_request::<$filter>(request)
                }
                fn on_response(response: &$crate::__private::ResponseHandle) {
                    $crate::__private::on_response::<$filter>(response)
                }
            }
    $crate::__private::export!(CascadeFilterExport with_types_in $crate::__private::bindings);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn() = || {
            fn assert_filter<F: $crate::Filter>() {}
            assert_filter::<$filter>();
        };
    };
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __private {
    pub use crate::wasm::bindings;
    pub use crate::wasm::bindings::Guest;
    pub use crate::wasm::bindings::cascade::filter::types::{
        Request as RequestHandle, Response as ResponseHandle, Verdict as VerdictRepr,
    };
    pub use crate::wasm::bindings::export;
    pub use crate::wasm::{check_config, on_request, on_response};
}
