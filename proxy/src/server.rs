//! Start-up: load everything, then hand the listeners to Pingora.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;

use crate::config;
use crate::filters::FilterRuntime;
use crate::service::CascadeProxy;
use crate::snapshot::{Snapshot, SnapshotError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot start the Wasm engine: {0:#}")]
    Engine(wasmtime::Error),
    #[error("{path}: TLS setup failed: {reason}")]
    Tls { path: String, reason: String },
}

/// Load and check the config at `path`, its modules and filter configs,
/// without serving. Returns the snapshot that would serve.
pub fn check(path: &Path) -> Result<Snapshot, StartError> {
    let config = config::load(path).map_err(SnapshotError::from)?;
    let runtime = FilterRuntime::new(&config.limits).map_err(StartError::Engine)?;
    Ok(block_on(Snapshot::load(path, &runtime))?)
}

/// Run start-up work that calls into filters (their config checks) before
/// Pingora's runtimes exist.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime needs no resources")
        .block_on(future)
}

/// Serve the config at `path` until the process is stopped.
pub fn serve(path: &Path) -> Result<(), StartError> {
    let config = config::load(path).map_err(SnapshotError::from)?;
    let runtime = FilterRuntime::new(&config.limits).map_err(StartError::Engine)?;
    let snapshot = block_on(Snapshot::load(path, &runtime))?;
    let server_config = snapshot.config.server.clone();
    log::info!(
        "loaded {} routes and {} modules from {}",
        snapshot.routes.routes().len(),
        snapshot.modules.len(),
        path.display()
    );

    let conf = ServerConf { threads: server_config.threads, work_stealing: false, ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        CascadeProxy::new(snapshot, runtime),
        "cascade",
    );
    proxy.add_tcp(&server_config.listen.to_string());
    println!("cascade: serving http://{}", server_config.listen);
    if let Some(tls) = &server_config.tls {
        let tls_error = |reason: String| StartError::Tls { path: tls.cert.display().to_string(), reason };
        let cert = tls.cert.to_str().ok_or_else(|| tls_error("path is not UTF-8".into()))?;
        let key = tls.key.to_str().ok_or_else(|| tls_error("path is not UTF-8".into()))?;
        let mut settings = TlsSettings::intermediate(cert, key).map_err(|e| tls_error(e.to_string()))?;
        settings.enable_h2();
        proxy.add_tls_with_settings(&tls.listen.to_string(), None, settings);
        println!("cascade: serving https://{} (HTTP/2 and HTTP/1.1)", tls.listen);
    }
    server.add_service(proxy);
    server.run_forever()
}
