//! Start-up: load everything, then hand the listeners to Pingora: the proxy
//! service, and the admin API on its own listener.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use pingora::listeners::tls::TlsSettings;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::{self, AdminApi};
use crate::config::{self, Config};
use crate::control::{ControlError, ControlPlane};
use crate::drain::Drain;
use crate::filters::FilterRuntime;
use crate::service::CascadeProxy;
use crate::snapshot::{IdleReaper, SnapshotError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("cannot start the Wasm engine: {0:#}")]
    Engine(wasmtime::Error),
    #[error("{path}: TLS setup failed: {reason}")]
    Tls { path: String, reason: String },
    #[error("{key} {addr}: cannot listen: {reason}")]
    Listen { key: &'static str, addr: SocketAddr, reason: std::io::Error },
}

/// Bind every listen address, all at once, then let them go: a port
/// another process holds, or two of the config's own addresses that
/// overlap (`0.0.0.0:8080` and `127.0.0.1:8080`), stop start-up with the
/// key and the address. Pingora binds later, in a background task whose
/// failure alone would leave this process up (see
/// [`exit_when_a_listener_fails`]).
fn check_listen(addrs: &[(&'static str, SocketAddr)]) -> Result<(), StartError> {
    let mut held = Vec::with_capacity(addrs.len());
    for &(key, addr) in addrs {
        held.push(std::net::TcpListener::bind(addr).map_err(|reason| StartError::Listen { key, addr, reason })?);
    }
    Ok(())
}

/// What Pingora's listening service panics with when a bind fails.
const LISTENER_FAILED: &str = "Failed to build listeners";

/// End the process when Pingora fails to bind a listener: it binds in a
/// task, whose panic ends only that task, and the process would run on
/// without the port (another process took it after [`check_listen`]),
/// where an exit lets a supervisor start it again. Other panics keep the
/// default: they end their own task or request only.
fn exit_when_a_listener_fails() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().map(String::as_str).or(payload.downcast_ref::<&str>().copied());
        if message.is_some_and(|m| m.starts_with(LISTENER_FAILED)) {
            eprintln!("cascade: cannot listen: a listener failed to bind (see above); exiting");
            std::process::exit(1);
        }
    }));
}

impl From<SnapshotError> for StartError {
    fn from(e: SnapshotError) -> Self {
        Self::Control(ControlError::Snapshot(e))
    }
}

/// Run start-up work that calls into filters (their config checks) before
/// Pingora's runtimes exist.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    // Timers on: a filter's config check may sleep, and is cut off at its
    // deadline by a timer (`chain::within`).
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime needs no resources")
        .block_on(future)
}

/// Load and check everything `path` names, as `serve` would.
pub fn load(path: &Path) -> Result<(ControlPlane, Config), StartError> {
    let config = config::load(path).map_err(SnapshotError::from)?;
    let runtime = FilterRuntime::new(&config.limits).map_err(StartError::Engine)?;
    let control = block_on(ControlPlane::start(path, runtime, config.clone()))?;
    Ok((control, config))
}

/// Load and check the config at `path`, its modules and filter configs,
/// without serving.
pub fn check(path: &Path) -> Result<ControlPlane, StartError> {
    load(path).map(|(control, _)| control)
}

/// Serve the config at `path` until the process is stopped.
pub fn serve(path: &Path) -> Result<(), StartError> {
    let (control, config) = load(path)?;
    let control = Arc::new(control);
    {
        // Scoped: a guard held for the rest of `serve` would pin the first
        // config (its modules, rate-limit state and health checkers) forever.
        let snapshot = control.current.load();
        log::info!(
            "loaded {} routes and {} modules from {}",
            snapshot.routes.routes().len(),
            snapshot.modules.len(),
            path.display()
        );
    }

    let admin_token = admin::read_token(&config.admin);
    let mut listens = vec![("server.listen", config.server.listen)];
    if let Some(tls) = &config.server.tls {
        listens.push(("server.tls.listen", tls.listen));
    }
    if admin_token.is_ok() {
        listens.push(("admin.listen", config.admin.listen));
    }
    check_listen(&listens)?;
    exit_when_a_listener_fails();
    block_on(control.tidy_store());

    let conf = ServerConf {
        threads: config.server.threads,
        // One current-thread runtime per worker: no cross-thread wakeups.
        work_stealing: false,
        // On SIGTERM, stop accepting at once, and give requests in flight
        // the grace period (Pingora's default is 5 minutes); `Drain` ends it
        // early once none are left. The runtimes' own shutdown then drops
        // whatever is left at its next await.
        grace_period_seconds: Some(config.server.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let proxy_app = CascadeProxy::new(&control);
    let mut proxy = pingora::proxy::http_proxy_service_with_name(&server.configuration, proxy_app, "cascade");
    proxy.add_tcp(&config.server.listen.to_string());
    println!("cascade: serving http://{}", config.server.listen);
    if let Some(tls) = &config.server.tls {
        let tls_error = |reason: String| StartError::Tls { path: tls.cert.display().to_string(), reason };
        let cert = tls.cert.to_str().ok_or_else(|| tls_error("path is not UTF-8".into()))?;
        let key = tls.key.to_str().ok_or_else(|| tls_error("path is not UTF-8".into()))?;
        let mut settings = TlsSettings::intermediate(cert, key).map_err(|e| tls_error(e.to_string()))?;
        settings.enable_h2();
        proxy.add_tls_with_settings(&tls.listen.to_string(), None, settings);
        println!("cascade: serving https://{} (HTTP/2 and HTTP/1.1)", tls.listen);
    }
    server.add_service(proxy);

    match admin_token {
        Ok(token) => {
            control.set_admin_token(token);
            let api = AdminApi::new(control.clone(), config.admin.max_body_bytes);
            let mut admin = Service::new("cascade-admin".to_string(), api);
            admin.threads = Some(1);
            admin.add_tcp(&config.admin.listen.to_string());
            server.add_service(admin);
            println!("cascade: admin API on http://{}", config.admin.listen);
        }
        Err(reason) => log::warn!("admin API is off: {reason}"),
    }
    server.add_service(background_service("drain", Drain));
    let reaper = IdleReaper { current: control.current.clone(), replaced: control.replaced.clone() };
    server.add_service(background_service("idle filter instances", reaper));
    reload_on_sighup(control);
    server.run_forever()
}

/// Reload the config on SIGHUP, as `POST /config/reload` does. A refused
/// reload is logged, and the old config keeps serving.
fn reload_on_sighup(control: Arc<ControlPlane>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
        Ok(runtime) => runtime,
        Err(e) => return log::error!("SIGHUP reloads are off: {e}"),
    };
    // The handler is registered here, before the listeners open, not in the
    // thread: a SIGHUP sent as soon as the port answers would otherwise meet
    // the default action, which ends the process.
    let hangups = {
        let _context = runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    };
    let mut hangups = match hangups {
        Ok(hangups) => hangups,
        Err(e) => return log::error!("SIGHUP reloads are off: {e}"),
    };
    let spawned = std::thread::Builder::new().name("cascade-sighup".into()).spawn(move || {
        runtime.block_on(async move {
            while hangups.recv().await.is_some() {
                match control.reload().await {
                    // What a restart would still change was logged by reload.
                    Ok(_) => log::info!("SIGHUP: config reloaded"),
                    Err(e) => log::error!("SIGHUP: reload refused, the old config keeps serving: {e}"),
                }
            }
        });
    });
    if let Err(e) = spawned {
        log::error!("SIGHUP reloads are off: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run in a process of its own (this test binary again): the hook
    /// ends the process it is installed in.
    #[test]
    fn a_listener_that_fails_to_bind_ends_the_process_and_other_panics_do_not() {
        const CHILD: &str = "CASCADE_TEST_LISTENER_HOOK";
        if std::env::var_os(CHILD).is_some() {
            exit_when_a_listener_fails();
            let other = std::thread::spawn(|| panic!("a request's task failed")).join();
            assert!(other.is_err());
            println!("alive after another panic");
            let _ = std::thread::spawn(|| panic!("{LISTENER_FAILED}: Os {{ code: 98, kind: AddrInUse }}")).join();
            println!("alive after a listener failed");
            return;
        }
        let name = "server::tests::a_listener_that_fails_to_bind_ends_the_process_and_other_panics_do_not";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(stdout.contains("alive after another panic"), "another panic ended the process: {stdout}");
        assert!(!stdout.contains("alive after a listener failed"), "{stdout}");
        assert!(stderr.contains("cascade: cannot listen") && stderr.contains("AddrInUse"), "{stderr}");
    }
}
