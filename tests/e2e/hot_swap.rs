//! The admin API and hot swap: uploads, bad uploads, rollback, delete,
//! persistence across restarts with no recompilation, reload, swaps under
//! load, and the operator CLI.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::*;

/// One route through module `swappable`, which starts as `misbehave`
/// (marks both phases with `x-misbehave`). The other version is `rewrite`
/// with an empty config (marks nothing). A response shows its version in
/// both phases: marked twice, or not at all. Every upload checks the
/// route's config under the entry's deadline, which counts wall-clock
/// ticks: room for a busy machine (a Python compile beside it, say).
const ROUTES: &str = r#"
[[route]]
name = "swap"
path_prefix = "/"
upstream = "origin"
[[route.filters]]
module = "swappable"
timeout_ms = 5000
config = {}
"#;

fn v1() -> Vec<u8> {
    std::fs::read(wasm("misbehave")).unwrap()
}

fn v2() -> Vec<u8> {
    std::fs::read(wasm("rewrite")).unwrap()
}

fn proxy() -> Proxy {
    Proxy::start(&ProxyConfig::new(ROUTES, &[]).with_module("swappable", v1()).with_admin())
}

/// Which version served `reply`; panics on a mix of versions.
fn version(reply: &Reply) -> u8 {
    assert_eq!(reply.status, 200, "{reply:?}");
    let request_marked = reply.json()["headers"].get("x-misbehave").is_some();
    let response_marked = reply.header("x-misbehave").is_some();
    assert_eq!(request_marked, response_marked, "one request saw two versions: {reply:?}");
    if request_marked { 1 } else { 2 }
}

/// Whether the store keeps the bytes of version `sha`.
fn stored_version(proxy: &Proxy, sha: &str) -> bool {
    proxy.dir.path().join(format!("store/versions/{sha}.wasm")).exists()
}

/// Whether the store keeps a compiled artifact of version `sha` (for any
/// engine).
fn has_artifact(proxy: &Proxy, sha: &str) -> bool {
    let compiled = std::fs::read_dir(proxy.dir.path().join("store/compiled")).unwrap().flatten();
    compiled.map(|engine| engine.path().join(format!("{sha}.cwasm"))).any(|path| path.exists())
}

/// Whether version `sha` has its copy in the store, and an artifact.
fn stored_files(proxy: &Proxy, sha: &str) -> (bool, bool) {
    (stored_version(proxy, sha), has_artifact(proxy, sha))
}

/// The versions of `name` the admin API lists.
fn listed_versions(proxy: &Proxy, name: &str) -> Vec<String> {
    let module = proxy.admin("GET", &format!("/modules/{name}"), b"", None).json();
    module["versions"].as_array().unwrap().iter().map(|v| v["sha256"].as_str().unwrap().to_string()).collect()
}

fn active_sha(proxy: &Proxy, name: &str) -> String {
    let reply = proxy.admin("GET", &format!("/modules/{name}"), b"", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.json()["active"]["sha256"].as_str().unwrap().to_string()
}

#[test]
fn admin_needs_the_token_except_for_healthz() {
    let proxy = proxy();
    assert_eq!(proxy.admin("GET", "/healthz", b"", Some("")).status, 200);
    for token in ["", "wrong", "test-admin-toke", "test-admin-token-and-more"] {
        let reply = proxy.admin("GET", "/modules", b"", Some(token));
        assert_eq!(reply.status, 401, "{token:?}");
        assert!(reply.json()["error"].as_str().unwrap().contains("token"));
    }
    // The scheme is case-insensitive, as RFC 9110 has it; the token is not.
    let url = format!("http://127.0.0.1:{}/modules", proxy.admin_port);
    assert_eq!(send("GET", &url, &[("authorization", &format!("bearer {ADMIN_TOKEN}"))]).status, 200);
    assert_eq!(send("GET", &url, &[("authorization", &format!("BEARER  {ADMIN_TOKEN}"))]).status, 200);
    assert_eq!(send("GET", &url, &[("authorization", &format!("Basic {ADMIN_TOKEN}"))]).status, 401);
    assert_eq!(send("GET", &url, &[("authorization", &format!("Bearer {}", ADMIN_TOKEN.to_uppercase()))]).status, 401);
    let modules = proxy.admin("GET", "/modules", b"", None);
    assert_eq!(modules.status, 200);
    assert_eq!(modules.json()[0]["name"], "swappable");
    assert_eq!(modules.json()[0]["routes"][0], "swap");
    let routes = proxy.admin("GET", "/routes", b"", None).json();
    assert_eq!(routes[0]["filters"][0]["module"], "swappable");

    // Metrics: requests by route and status, and per-filter latency.
    assert_eq!(proxy.get("/x", &[]).status, 200);
    proxy.wait_for_metrics(&[
        "cascade_requests_total{route=\"swap\",status=\"200\"} 1",
        "cascade_filter_duration_seconds_count{module=\"swappable\",phase=\"on-request\"} 1",
        "cascade_filter_duration_seconds_count{module=\"swappable\",phase=\"on-response\"} 1",
        "cascade_filter_duration_seconds_bucket{module=\"swappable\",phase=\"on-request\",le=\"+Inf\"} 1",
    ]);
}

#[test]
fn bad_uploads_change_nothing() {
    let proxy = proxy();
    let before = active_sha(&proxy, "swappable");
    // (path, body, token, expected status, expected words in the error)
    type Case<'a> = (&'a str, Vec<u8>, Option<&'a str>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("/modules/swappable", b"not wasm at all".to_vec(), None, 400, "not a WebAssembly binary"),
        ("/modules/swappable", b"\0asm\x01\0\0\0".to_vec(), None, 400, "core WebAssembly module"),
        ("/modules/swappable", b"\0asm\x0d\0\x01\0".to_vec(), None, 400, "not a cascade:filter component"),
        ("/modules/swappable", component_importing("wasi:http/outgoing-handler@0.2.0"), None, 400, "wasi:http"),
        ("/modules/swappable", v2(), Some("wrong"), 401, "token"),
        ("/modules/swappable", v2(), Some(""), 401, "token"),
        ("/modules/..%2Fx", v2(), None, 400, "not valid"),
        ("/modules/", v2(), None, 400, "not valid"),
    ];
    // The compiled artifacts on disk: a refused upload adds none.
    let artifacts = || {
        let compiled = proxy.dir.path().join("store/compiled");
        std::fs::read_dir(compiled).unwrap().flatten().flat_map(|d| std::fs::read_dir(d.path()).unwrap()).count()
    };
    let artifacts_before = artifacts();
    for (path, body, token, status, message) in cases {
        let reply = proxy.admin("PUT", path, &body, token);
        assert_eq!(reply.status, status, "{path} {message}: {reply:?}");
        let error = reply.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(message), "{path}: {error}");
        assert_eq!(active_sha(&proxy, "swappable"), before, "{message}: the active version changed");
        assert_eq!(version(&proxy.get("/x", &[])), 1, "{message}: requests changed");
    }
    assert_eq!(artifacts(), artifacts_before, "a refused upload left a compiled artifact behind");
    // An oversized body is refused from its Content-Length, before it is
    // read (a client streaming it would see the connection close early).
    let (status, body) = send_raw(
        proxy.admin_port,
        &format!(
            "PUT /modules/swappable HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            3 << 20
        ),
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("larger than"), "{body}");
    assert_eq!(active_sha(&proxy, "swappable"), before);
}

/// The first upload over a module shipped in the modules directory can be
/// rolled back to the shipped file.
#[test]
fn rollback_returns_to_the_shipped_module() {
    let proxy = proxy();
    assert_eq!(version(&proxy.get("/x", &[])), 1);
    // Before any upload there is nothing to go back to: the module exists,
    // so that is a conflict, not a missing module.
    let nothing = proxy.admin("POST", "/modules/swappable/rollback", b"", None);
    assert_eq!(nothing.status, 409, "{nothing:?}");
    assert_eq!(proxy.admin("POST", "/modules/nonesuch/rollback", b"", None).status, 404);
    assert_eq!(proxy.admin("PUT", "/modules/swappable", &v2(), None).status, 200);
    assert_eq!(version(&proxy.get("/x", &[])), 2);
    let back = proxy.admin("POST", "/modules/swappable/rollback", b"", None);
    assert_eq!(back.status, 200, "{back:?}");
    assert_eq!(version(&proxy.get("/x", &[])), 1);
    // And it stays so across a restart.
    let proxy = proxy.restart();
    assert_eq!(version(&proxy.get("/x", &[])), 1);
}

/// A modules-directory file changed on disk since it was loaded never
/// served: the first upload over the module does not keep it as the
/// version a rollback goes back to.
#[test]
fn a_shipped_file_changed_since_it_was_loaded_is_no_rollback_target() {
    let proxy = proxy();
    // The same component with a custom section more: other bytes, not loaded.
    let mut changed = v1();
    changed.extend_from_slice(&[0, 7, 5, b'e', b'd', b'i', b't', b's', 1]);
    std::fs::write(proxy.dir.path().join("modules/swappable.wasm"), changed).unwrap();
    assert_eq!(proxy.admin("PUT", "/modules/swappable", &v2(), None).status, 200);
    let back = proxy.admin("POST", "/modules/swappable/rollback", b"", None);
    assert_eq!(back.status, 409, "rolled back to bytes that never served: {back:?}");
    assert_eq!(version(&proxy.get("/x", &[])), 2);
}

/// A module of the modules directory, once deleted, stays deleted across a
/// reload and a restart though its file is still there, until a module of
/// that name is uploaded.
#[test]
fn a_deleted_module_of_the_modules_directory_stays_deleted() {
    let proxy = Proxy::start(
        &ProxyConfig::new(ROUTES, &[]).with_module("swappable", v1()).with_module("spare", v2()).with_admin(),
    );
    let spare = active_sha(&proxy, "spare");
    assert!(has_artifact(&proxy, &spare));
    assert_eq!(proxy.admin("DELETE", "/modules/spare", b"", None).status, 200);
    assert!(!has_artifact(&proxy, &spare), "the deleted module's artifact stayed");
    assert_eq!(proxy.admin("POST", "/config/reload", b"", None).status, 200);
    assert_eq!(proxy.admin("GET", "/modules/spare", b"", None).status, 404, "a reload loaded the file again");
    let proxy = proxy.restart();
    assert_eq!(proxy.admin("GET", "/modules/spare", b"", None).status, 404, "a restart loaded the file again");
    assert_eq!(version(&proxy.get("/x", &[])), 1);
    // A route that names it is refused, and the error says why it is gone.
    let routes_file = proxy.dir.path().join("routes/test.toml");
    let spare_route = "\n[[route]]\nname = \"spare\"\npath_prefix = \"/spare\"\nupstream = \"origin\"\n\
                       [[route.filters]]\nmodule = \"spare\"\nconfig = {}\n";
    std::fs::write(&routes_file, format!("{ROUTES}{spare_route}")).unwrap();
    let refused = proxy.admin("POST", "/config/reload", b"", None);
    assert_eq!(refused.status, 400, "{refused:?}");
    let error = refused.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("\"spare\" is not loaded") && error.contains("deleted through the admin API"), "{error}");
    std::fs::write(&routes_file, ROUTES).unwrap();

    // An upload brings it back, with no way back to the deleted file.
    let up = proxy.admin("PUT", "/modules/spare", &v1(), None);
    assert_eq!(up.status, 200, "{up:?}");
    let uploaded = active_sha(&proxy, "spare");
    assert_eq!(proxy.admin("POST", "/modules/spare/rollback", b"", None).status, 409);
    let proxy = proxy.restart();
    assert_eq!(active_sha(&proxy, "spare"), uploaded);
}

#[test]
fn upload_rollback_delete_and_restart_without_recompiling() {
    let proxy = proxy();
    let up = proxy.admin("PUT", "/modules/swappable", &v1(), None);
    assert_eq!(up.status, 200, "{up:?}");
    let up = proxy.admin("PUT", "/modules/swappable", &v2(), None);
    assert_eq!(up.status, 200, "{up:?}");
    assert_eq!(up.json()["versions"].as_array().unwrap().len(), 2);
    assert_eq!(version(&proxy.get("/x", &[])), 2);
    // A retried deploy of the same bytes changes nothing: rollback still
    // goes back to v1.
    assert_eq!(proxy.admin("PUT", "/modules/swappable", &v2(), None).status, 200);

    let back = proxy.admin("POST", "/modules/swappable/rollback", b"", None);
    assert_eq!(back.status, 200, "{back:?}");
    assert_eq!(version(&proxy.get("/x", &[])), 1);
    let none_left = proxy.admin("POST", "/modules/swappable/rollback", b"", None);
    assert_eq!(none_left.status, 409, "{none_left:?}");

    // A module a route uses cannot be deleted; an unused one can.
    let refused = proxy.admin("DELETE", "/modules/swappable", b"", None);
    assert_eq!(refused.status, 409);
    assert!(refused.json()["error"].as_str().unwrap().contains("swap"));
    assert_eq!(proxy.admin("PUT", "/modules/spare", &v2(), None).status, 200);
    assert_eq!(proxy.admin("DELETE", "/modules/spare", b"", None).status, 200);
    assert_eq!(proxy.admin("GET", "/modules/spare", b"", None).status, 404);
    // A deleted module's stored bytes and artifact go, but for a version
    // another module still has: spare was v2, which swappable keeps.
    let stored = |sha: &str| stored_version(&proxy, sha);
    let swappable = proxy.admin("GET", "/modules/swappable", b"", None).json();
    let kept: Vec<String> =
        swappable["versions"].as_array().unwrap().iter().map(|v| v["sha256"].as_str().unwrap().to_string()).collect();
    assert_eq!(kept.len(), 2, "{swappable}");
    assert!(kept.iter().all(|sha| stored(sha)), "a version swappable keeps was removed with spare");
    let mut unique = v2();
    unique.extend_from_slice(&[0, 7, 5, b's', b'p', b'a', b'r', b'e', 1]);
    assert_eq!(proxy.admin("PUT", "/modules/spare", &unique, None).status, 200);
    let unique_sha = active_sha(&proxy, "spare");
    assert!(stored(&unique_sha));
    assert_eq!(proxy.admin("DELETE", "/modules/spare", b"", None).status, 200);
    assert!(!stored(&unique_sha), "a deleted module's bytes stayed on disk");

    // Upload v2 again, then restart on the same store: the active version
    // survives, and every module comes from the artifact cache.
    assert_eq!(proxy.admin("PUT", "/modules/swappable", &v2(), None).status, 200);
    let active = active_sha(&proxy, "swappable");
    let proxy = proxy.restart();
    assert_eq!(active_sha(&proxy, "swappable"), active);
    assert_eq!(version(&proxy.get("/x", &[])), 2);
    proxy.wait_for_metrics(&["cascade_module_compilations_total 0"]);
    let module = proxy.admin("GET", "/modules/swappable", b"", None).json();
    assert_eq!(module["active"]["from_cache"], true);
}

/// The store keeps `modules.keep_versions` versions of a module: an upload
/// past them forgets the oldest, and its file and compiled artifact go, so
/// a store does not grow with every deploy.
#[test]
fn an_upload_past_keep_versions_forgets_the_oldest() {
    let proxy = Proxy::start(
        &ProxyConfig::new(ROUTES, &[])
            .with_module("swappable", v1())
            .with_modules_key("keep_versions = 2")
            .with_admin(),
    );
    let shipped = active_sha(&proxy, "swappable");
    // v2 made distinct by a custom section: each upload a new version.
    let variant = |n: u8| {
        let mut bytes = v2();
        bytes.extend_from_slice(&[0, 5, 3, b'v', b'e', b'r', n]);
        bytes
    };
    let mut uploaded = Vec::new();
    for n in 1..=3 {
        let up = proxy.admin("PUT", "/modules/swappable", &variant(n), None);
        assert_eq!(up.status, 200, "{up:?}");
        uploaded.push(active_sha(&proxy, "swappable"));
    }
    assert_eq!(listed_versions(&proxy, "swappable"), uploaded[1..], "the store keeps the last two");
    assert_eq!(stored_files(&proxy, &uploaded[0]), (false, false), "a forgotten version's files stayed");
    for kept in &uploaded[1..] {
        assert_eq!(stored_files(&proxy, kept), (true, true));
    }
    // The modules directory's file is forgotten as a version too, and its
    // copy in the store goes, but each start still loads it (an upload
    // overrides it after): it keeps its artifact, so a restart compiles
    // nothing.
    assert_eq!(
        stored_files(&proxy, &shipped),
        (false, true),
        "the modules directory's copy stayed, or its artifact went"
    );
    // A rollback reaches the versions kept and no further.
    assert_eq!(proxy.admin("POST", "/modules/swappable/rollback", b"", None).status, 200);
    assert_eq!(active_sha(&proxy, "swappable"), uploaded[1]);
    assert_eq!(proxy.admin("POST", "/modules/swappable/rollback", b"", None).status, 409);
    assert_eq!(version(&proxy.get("/x", &[])), 2);
    // Artifacts of another Wasmtime build (before an upgrade) that has not
    // started for a month go at the next start.
    let older_engine = proxy.dir.path().join("store/compiled/0123456789abcdef");
    std::fs::create_dir_all(&older_engine).unwrap();
    std::fs::write(older_engine.join(format!("{}.cwasm", uploaded[1])), b"old").unwrap();
    let marker = std::fs::File::create(older_engine.join(".last-start")).unwrap();
    marker.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(40 * 86_400)).unwrap();
    // A lowered setting applies at the start that brings it, and
    // `cascade check` of it changes nothing.
    let main = proxy.dir.path().join("cascade.toml");
    let set_keep = |from: usize, to: usize| {
        let text = std::fs::read_to_string(&main).unwrap();
        let (from, to) = (format!("keep_versions = {from}"), format!("keep_versions = {to}"));
        assert!(text.contains(&from), "{text}");
        std::fs::write(&main, text.replace(&from, &to)).unwrap();
    };
    set_keep(2, 1);
    let check = run_cascade(&["check", "--config", main.to_str().unwrap()]);
    assert!(check.status.success(), "{check:?}");
    assert_eq!(listed_versions(&proxy, "swappable"), uploaded[1..], "cascade check changed the store");
    assert_eq!(stored_files(&proxy, &uploaded[2]), (true, true), "cascade check removed a version's files");
    assert!(older_engine.exists(), "cascade check removed artifacts");
    let proxy = proxy.restart();
    assert_eq!(active_sha(&proxy, "swappable"), uploaded[1]);
    proxy.wait_for_metrics(&["cascade_module_compilations_total 0"]);
    assert!(!older_engine.exists(), "artifacts of an engine unused for a month stayed");
    assert_eq!(listed_versions(&proxy, "swappable"), uploaded[1..2], "the store keeps the active version only");
    assert_eq!(stored_files(&proxy, &uploaded[2]), (false, false), "a version past the lowered setting kept its files");
    assert_eq!(stored_files(&proxy, &uploaded[1]), (true, true));
    // And at the reload that brings it.
    set_keep(1, 3);
    assert_eq!(proxy.admin("POST", "/config/reload", b"", None).status, 200);
    for n in 4..=5 {
        assert_eq!(proxy.admin("PUT", "/modules/swappable", &variant(n), None).status, 200);
    }
    assert_eq!(listed_versions(&proxy, "swappable").len(), 3);
    let active = active_sha(&proxy, "swappable");
    set_keep(3, 1);
    assert_eq!(proxy.admin("POST", "/config/reload", b"", None).status, 200);
    assert_eq!(listed_versions(&proxy, "swappable"), [active], "a reload lowering keep_versions forgot nothing");
}

/// A stored version damaged on disk does not keep the proxy from starting:
/// it serves the newest earlier version that loads, and says so. A reload
/// before then keeps the version serving.
#[test]
fn a_damaged_stored_version_falls_back_to_an_earlier_one_at_start() {
    let proxy = proxy();
    assert_eq!(proxy.admin("PUT", "/modules/swappable", &v2(), None).status, 200);
    let damaged = active_sha(&proxy, "swappable");
    assert_eq!(version(&proxy.get("/x", &[])), 2);
    let stored = proxy.dir.path().join(format!("store/versions/{damaged}.wasm"));
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    // A reload keeps the version serving as it is.
    let reload = proxy.admin("POST", "/config/reload", b"", None);
    assert_eq!(reload.status, 200, "{reload:?}");
    assert_eq!(version(&proxy.get("/x", &[])), 2);
    let proxy = proxy.restart();
    assert_eq!(version(&proxy.get("/x", &[])), 1, "the shipped version, the one before, serves");
    assert!(!proxy.log_lines(&format!("version {damaged} cannot be loaded")).is_empty());
    assert!(!proxy.log_lines("serving the earlier version").is_empty());
    // Nothing before the version serving: no rollback. Uploading the damaged
    // version again repairs its file, so a restart serves it.
    assert_eq!(proxy.admin("POST", "/modules/swappable/rollback", b"", None).status, 409);
    assert_eq!(proxy.admin("PUT", "/modules/swappable", &v2(), None).status, 200);
    let proxy = proxy.restart();
    assert_eq!(version(&proxy.get("/x", &[])), 2, "the re-upload left the damaged file as it was");
}

/// A start that falls back from a damaged version keeps the version it
/// serves whatever `keep_versions` says, so the next start can fall back to
/// it again (a module with no file in the modules directory would be left
/// out otherwise).
#[test]
fn a_fallback_version_is_kept_past_a_lowered_keep_versions() {
    let proxy = Proxy::start(
        &ProxyConfig::new(ROUTES, &[])
            .with_module("swappable", v1())
            .with_modules_key("keep_versions = 2")
            .with_admin(),
    );
    for upload in [v1(), v2()] {
        assert_eq!(proxy.admin("PUT", "/modules/extra", &upload, None).status, 200);
    }
    let [fallback, damaged] = [0, 1].map(|i| listed_versions(&proxy, "extra")[i].clone());
    let stored = proxy.dir.path().join(format!("store/versions/{damaged}.wasm"));
    std::fs::write(&stored, b"damaged").unwrap();
    let main = proxy.dir.path().join("cascade.toml");
    let text = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, text.replace("keep_versions = 2", "keep_versions = 1")).unwrap();
    let proxy = proxy.restart();
    assert_eq!(active_sha(&proxy, "extra"), fallback);
    let proxy = proxy.restart();
    assert_eq!(active_sha(&proxy, "extra"), fallback, "the second start lost the version it fell back to");
}

/// After a fallback at start, rollback goes back from the version serving,
/// and passes over a version whose file no longer loads.
#[test]
fn rollback_passes_over_a_damaged_version() {
    let proxy = proxy();
    // The same components with a custom section more: other versions, the
    // same behaviour.
    let other = |mut bytes: Vec<u8>| {
        bytes.extend_from_slice(&[0, 7, 5, b'e', b'd', b'i', b't', b's', 1]);
        bytes
    };
    for upload in [v2(), other(v1())] {
        assert_eq!(proxy.admin("PUT", "/modules/swappable", &upload, None).status, 200);
    }
    let damaged = active_sha(&proxy, "swappable");
    let stored = proxy.dir.path().join(format!("store/versions/{damaged}.wasm"));
    std::fs::remove_file(&stored).unwrap();
    let proxy = proxy.restart();
    assert_eq!(version(&proxy.get("/x", &[])), 2, "the upload before the lost one serves");
    assert_eq!(proxy.admin("PUT", "/modules/swappable", &other(v2()), None).status, 200);
    let back = proxy.admin("POST", "/modules/swappable/rollback", b"", None);
    assert_eq!(back.status, 200, "{back:?}");
    assert_eq!(version(&proxy.get("/x", &[])), 2, "rollback went to the lost version's place, not past it");
    let back = proxy.admin("POST", "/modules/swappable/rollback", b"", None);
    assert_eq!(back.status, 200, "{back:?}");
    assert_eq!(version(&proxy.get("/x", &[])), 1, "then to the shipped file");
}

#[test]
fn swaps_under_load_drop_nothing_and_never_mix_versions() {
    let proxy = Arc::new(proxy());
    // Both versions are compiled once; later swaps load cached artifacts.
    assert_eq!(proxy.admin("PUT", "/modules/swappable", &v2(), None).status, 200);
    let done = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (proxy, done) = (proxy.clone(), done.clone());
            std::thread::spawn(move || {
                let mut seen = [0usize; 2];
                while !done.load(Ordering::Relaxed) {
                    seen[usize::from(version(&proxy.get("/load", &[]))) - 1] += 1;
                }
                seen
            })
        })
        .collect();
    for i in 0..200u32 {
        let body = if i.is_multiple_of(2) { v1() } else { v2() };
        let reply = proxy.admin("PUT", "/modules/swappable", &body, None);
        assert_eq!(reply.status, 200, "swap {i}: {reply:?}");
    }
    done.store(true, Ordering::Relaxed);
    let mut total = [0usize; 2];
    for client in clients {
        let seen = client.join().expect("a client saw a failed or mixed response");
        total[0] += seen[0];
        total[1] += seen[1];
    }
    assert!(total[0] + total[1] > 0);
    proxy.wait_for_metrics(&["cascade_module_swaps_total 201"]);
}

/// A reload reads the admin token again, so a rotated (or leaked) token is
/// replaced without a restart; a token that cannot be read refuses the
/// reload, and the one in use stays.
#[test]
fn a_reload_rotates_the_admin_token() {
    let proxy = proxy();
    let main = proxy.dir.path().join("cascade.toml");
    let config = std::fs::read_to_string(&main).unwrap();
    let rotated = config.replace("token_env = \"CASCADE_TEST_ADMIN_TOKEN\"", "token_file = \"admin-token\"");
    assert_ne!(rotated, config);
    std::fs::write(&main, rotated).unwrap();
    std::fs::write(proxy.dir.path().join("admin-token"), "rotated-admin-token\n").unwrap();
    let reload = proxy.admin("POST", "/config/reload", b"", None);
    assert_eq!(reload.status, 200, "{reload:?}");
    assert_eq!(proxy.admin("GET", "/modules", b"", None).status, 401, "the old token still works");
    assert_eq!(proxy.admin("GET", "/modules", b"", Some("rotated-admin-token")).status, 200);

    std::fs::remove_file(proxy.dir.path().join("admin-token")).unwrap();
    let refused = proxy.admin("POST", "/config/reload", b"", Some("rotated-admin-token"));
    assert_eq!(refused.status, 400, "{refused:?}");
    let error = refused.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("admin token") && error.contains("admin-token"), "{error}");
    assert_eq!(proxy.admin("GET", "/modules", b"", Some("rotated-admin-token")).status, 200);
}

#[test]
fn broken_reload_keeps_the_old_routes() {
    let proxy = proxy();
    let routes_file = proxy.dir.path().join("routes/test.toml");
    std::fs::write(&routes_file, format!("{ROUTES}\n[[route]]\nname = \"oops\"\nupstream = \"nowhere\"\n")).unwrap();
    let reply = proxy.admin("POST", "/config/reload", b"", None);
    assert_eq!(reply.status, 400, "{reply:?}");
    let error = reply.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("routes/test.toml:13:"), "{error}");
    assert!(error.contains("nowhere"), "{error}");
    assert_eq!(version(&proxy.get("/x", &[])), 1);

    std::fs::write(
        &routes_file,
        format!("{ROUTES}\n[[route]]\nname = \"plain\"\npath_prefix = \"/plain\"\nupstream = \"origin\"\n"),
    )
    .unwrap();
    let reloaded = proxy.admin("POST", "/config/reload", b"", None);
    assert_eq!(reloaded.status, 200);
    assert_eq!(reloaded.json()["restart_needed"], serde_json::json!([]), "{reloaded:?}");
    let plain = proxy.get("/plain", &[]);
    assert_eq!(plain.status, 200);
    assert!(plain.header("x-misbehave").is_none());

    // A change a reload cannot apply is named in the answer and the log.
    let main = proxy.dir.path().join("cascade.toml");
    let config = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, config.replace("threads = 2", "threads = 3")).unwrap();
    let reloaded = proxy.admin("POST", "/config/reload", b"", None);
    assert_eq!(reloaded.status, 200, "{reloaded:?}");
    assert_eq!(reloaded.json()["restart_needed"], serde_json::json!(["server.threads"]), "{reloaded:?}");
    proxy.wait_for_log_line(&["config reload: changes to server.threads take effect only at a restart"]);
    // Measured against what the process started with, not the last reload.
    let again = proxy.admin("POST", "/config/reload", b"", None);
    assert_eq!(again.json()["restart_needed"], serde_json::json!(["server.threads"]), "{again:?}");
    std::fs::write(&main, config.clone()).unwrap();
    let back = proxy.admin("POST", "/config/reload", b"", None);
    assert_eq!(back.json()["restart_needed"], serde_json::json!([]), "{back:?}");

    // A memory cap past the slots the engine started with is refused, not
    // silently held to them.
    std::fs::write(&main, format!("{config}\n[limits]\nfilter_memory_mb = 64\n")).unwrap();
    let refused = proxy.admin("POST", "/config/reload", b"", None);
    assert_eq!(refused.status, 400, "{refused:?}");
    let error = refused.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("64 MiB is more than the 16 MiB the engine was started with"), "{error}");
    std::fs::write(&main, config).unwrap();
}

#[test]
fn operator_cli_pushes_lists_and_rolls_back() {
    let proxy = proxy();
    let admin = format!("127.0.0.1:{}", proxy.admin_port);
    let cli = |args: &[&str]| {
        std::process::Command::new(cascade_bin())
            .args(args)
            .env("CASCADE_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .expect("run cascade")
    };
    for file in ["misbehave", "rewrite"] {
        let path = wasm(file);
        let out = cli(&["module", "push", "swappable", path.to_str().unwrap(), "--admin", &admin]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(version(&proxy.get("/x", &[])), 2);
    let out = cli(&["module", "list", "--admin", &admin]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"swappable\""));
    assert!(cli(&["module", "rollback", "swappable", "--admin", &admin]).status.success());
    assert_eq!(version(&proxy.get("/x", &[])), 1);
    assert!(cli(&["reload", "--admin", &admin]).status.success());
    let wrong = std::process::Command::new(cascade_bin())
        .args(["module", "list", "--admin", &admin])
        .env("CASCADE_ADMIN_TOKEN", "nope")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
    // An upload past the limit (2 MiB here) is answered 413 before the body
    // is read; the CLI reports that answer, not the broken pipe it may hit.
    let large = proxy.dir.path().join("large.wasm");
    std::fs::write(&large, vec![0u8; 8 << 20]).unwrap();
    let out = cli(&["module", "push", "swappable", large.to_str().unwrap(), "--admin", &admin]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("413") && stderr.contains("larger than"), "{stderr}");
}

#[test]
fn sighup_reloads_and_a_broken_config_is_refused() {
    let mut proxy = proxy();
    let routes_file = proxy.dir.path().join("routes/test.toml");
    std::fs::write(&routes_file, format!("{ROUTES}\n[[route]]\nname = \"oops\"\nupstream = \"nowhere\"\n")).unwrap();
    proxy.signal("HUP");
    proxy.wait_for_log_line(&["SIGHUP: reload refused"]);
    assert!(proxy.is_running(), "SIGHUP with a broken config must not stop the proxy");
    assert_eq!(version(&proxy.get("/x", &[])), 1);

    std::fs::write(
        &routes_file,
        format!("{ROUTES}\n[[route]]\nname = \"plain\"\npath_prefix = \"/plain\"\nupstream = \"origin\"\n"),
    )
    .unwrap();
    proxy.signal("HUP");
    eventually("the SIGHUP reload of the routes", std::time::Duration::from_secs(30), || {
        proxy.get("/plain", &[]).header("x-misbehave").is_none()
    });
    proxy.wait_for_metrics(&["cascade_config_reloads_total 1"]);
}

/// A reload frees the config it replaced, modules and all, once no request
/// uses it: nothing keeps the first config alive for the life of the process.
#[test]
fn a_reload_frees_the_config_it_replaced() {
    let proxy = proxy();
    let live_versions = || {
        let text = proxy.wait_for_metrics(&["cascade_filter_instances_live 0"]);
        metric_value(&text, "cascade_module_versions_live")
    };
    assert_eq!(live_versions(), 1, "one module is loaded");
    for _ in 0..3 {
        assert_eq!(proxy.admin("POST", "/config/reload", b"", None).status, 200);
        assert_eq!(proxy.get("/x", &[]).status, 200);
    }
    eventually("the replaced configs freed", std::time::Duration::from_secs(10), || live_versions() == 1);
}

fn resident_kib(pid: u32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
}

/// Old versions are freed when their last request ends: after 1,000 swaps
/// the live module versions and instances are back where they started, and
/// resident memory has not grown with the number of swaps.
#[test]
fn a_thousand_swaps_leak_nothing() {
    let proxy = proxy();
    let swap = |i: usize| {
        let body = if i.is_multiple_of(2) { v2() } else { v1() };
        assert_eq!(proxy.admin("PUT", "/modules/swappable", &body, None).status, 200);
        assert_eq!(proxy.get("/x", &[]).status, 200);
    };
    // Warm up: both versions compiled and cached, allocator pools filled.
    (0..50).for_each(swap);
    let live_versions = || {
        let text = proxy.wait_for_metrics(&["cascade_filter_instances_live 0"]);
        metric_value(&text, "cascade_module_versions_live")
    };
    let versions_before = live_versions();
    let rss_before = resident_kib(proxy.pid());
    (0..1000).for_each(swap);
    // A leak would keep up to 1,000 versions alive; allow one still pinned
    // by the last request's logging phase.
    let versions_after = live_versions();
    assert!(versions_after <= versions_before + 1, "{versions_before} live versions before, {versions_after} after");
    let growth_kib = resident_kib(proxy.pid()) - rss_before;
    // One leaked version would be about 0.4 MiB, so 1,000 would be hundreds
    // of MiB; allow for allocator noise well below that.
    assert!(growth_kib < 32 * 1024, "resident memory grew by {growth_kib} KiB over 1,000 swaps");
}

/// A Python filter's bytes (about 18 MB: it carries CPython).
fn python_filter() -> Vec<u8> {
    let path = root().join("target/python/bot_block.wasm");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}: build it with scripts/build-filters.sh", path.display()))
}

/// A filter written in Python (filters/bot-block-python, built with
/// componentize-py: a component that carries CPython) is uploaded over a
/// route's module while the proxy serves, as an application team would
/// ship a policy. The upload compiles off the admin API's thread and off
/// the request path: while it is in flight (its compile takes seconds, on
/// any machine), another route is served and the admin API answers. The
/// filter's `check-config` refuses the route's bad config, and so the
/// upload; once the config is good, it answers the bots it is told to
/// refuse and lets others through, and its instances are reused.
#[test]
fn a_filter_written_in_python_is_uploaded_and_serves() {
    let python = python_filter();
    // A deadline with room: it counts wall-clock ticks, and an interpreter
    // on a busy machine can pass the default 50 ms.
    let routes = |config: &str| {
        format!(
            "{ROUTES}\n[[route]]\nname = \"bots\"\npath_prefix = \"/bots/\"\nupstream = \"origin\"\n\
             [[route.filters]]\nmodule = \"policy\"\nreuse_instances = true\ntimeout_ms = 5000\nconfig = {config}\n"
        )
    };
    let config = ProxyConfig::new(&routes("{ deny_agents = [] }"), &[])
        .with_module("swappable", v1())
        .with_module("policy", std::fs::read(wasm("noop")).unwrap())
        .with_admin_uploads_of(64);
    let proxy = Arc::new(Proxy::start(&config));
    let before = active_sha(&proxy, "policy");

    // The route's config is one the Python filter refuses: so is the upload,
    // after a compile during which everything else answers.
    let uploading = Arc::new(AtomicBool::new(true));
    let upload = {
        let (proxy, uploading, python) = (proxy.clone(), uploading.clone(), python.clone());
        std::thread::spawn(move || {
            // Down whether the call returns or panics, so the loop below ends.
            struct Done(Arc<AtomicBool>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::SeqCst);
                }
            }
            let _done = Done(uploading);
            proxy.admin("PUT", "/modules/policy", &python, None)
        })
    };
    let mut answered_while_compiling = 0;
    while uploading.load(Ordering::SeqCst) {
        assert_eq!(version(&proxy.get("/x", &[])), 1);
        assert_eq!(proxy.admin("GET", "/modules", b"", None).status, 200);
        if uploading.load(Ordering::SeqCst) {
            answered_while_compiling += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let refused = upload.join().unwrap();
    assert!(answered_while_compiling > 0, "nothing was answered while the upload compiled");
    assert_eq!(refused.status, 400, "{refused:?}");
    let error = refused.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains("deny_agents must be a non-empty list"), "{error}");
    assert_eq!(active_sha(&proxy, "policy"), before);

    std::fs::write(proxy.dir.path().join("routes/test.toml"), routes("{ deny_agents = [\"BadBot\"], status = 429 }"))
        .unwrap();
    assert_eq!(proxy.admin("POST", "/config/reload", b"", None).status, 200);
    let uploaded = proxy.admin("PUT", "/modules/policy", &python, None);
    assert_eq!(uploaded.status, 200, "{uploaded:?}");
    assert_ne!(active_sha(&proxy, "policy"), before);

    let bot = proxy.get("/bots/page", &[("user-agent", "Mozilla/5.0 (compatible; badbot/2.1)")]);
    assert_eq!((bot.status, bot.body.as_str()), (429, "forbidden\n"), "{bot:?}");
    proxy.wait_for_log_line(&["refused user agent mozilla/5.0 (compatible; badbot/2.1)"]);
    let person = proxy.get("/bots/page", &[("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")]);
    assert_eq!(person.status, 200, "{person:?}");
    assert_eq!(person.json()["path"], "/bots/page", "{person:?}");
    // Its instance is parked for the next request, though CPython's memory
    // starts at 12.4 of the 16 MiB cap.
    proxy.wait_for_metrics(&["cascade_filter_instances_live 0\n", "cascade_filter_instances_idle 1\n"]);
}
