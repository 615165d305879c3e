//! The floor under the benchmark's row (b): Pingora proxying every request to
//! one upstream, with nothing of Cascade's (no admission, routing, cache,
//! request ids, headers or metrics), on the same server settings and
//! allocator. `scripts/bench.sh load` runs it as a reference row, so the gap
//! between nginx and Cascade splits into Pingora's part and Cascade's.
//!
//!   cargo run --release --example bare_pingora -- <listen> <upstream>

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    // As Cascade: no (disabled) compression module on every request.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bare_pingora <listen> <upstream> [threads]";
    let listen = args.next().expect(usage);
    let upstream = args.next().expect(usage).parse().expect("upstream is ip:port");
    let threads = args.next().map_or(1, |t| t.parse().expect("threads is a number"));
    // Cascade's settings (proxy/src/server.rs): one current-thread runtime per worker.
    let conf = ServerConf { threads, work_stealing: false, ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
