//! Key-value stores: written by filters and by the admin API, shared by
//! every request and instance, bounded, and kept over a reload. The `auth`
//! filter refuses revoked tokens from one.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

use crate::support::*;

/// An HS256 token of the fixture keyset, valid for ten minutes.
fn hs_token(sub: &str, jti: &str) -> String {
    let secret = std::fs::read(root().join("tests/fixtures/jwt/hs-secret")).unwrap();
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = json!({ "sub": sub, "jti": jti, "exp": exp });
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.trim_ascii_end())).unwrap()
}

fn revocation_config(store: &str) -> ProxyConfig {
    let routes = format!(
        "[[route]]\nname = \"api\"\npath_prefix = \"/\"\nupstream = \"origin\"\n[[route.filters]]\nmodule = \"auth\"\n\
         config = {{ keyset = \"hs\", revocation_store = \"{store}\", revoked_claims = [\"jti\", \"sub\"] }}\n"
    );
    let secret = root().join("tests/fixtures/jwt/hs-secret");
    ProxyConfig::new(&routes, &["auth"]).with_admin().with_main(&format!(
        "\n[jwt.keysets.hs]\nalgorithms = [\"HS256\"]\nsecret_file = \"{}\"\n\n\
         [kv_stores.revoked]\nfilters_may_write = false\n",
        secret.display()
    ))
}

/// An operator revokes one token, then every token of a subject, through
/// the admin API; `auth` refuses them at once, a reload keeps the entries,
/// and an entry with a TTL lets the tokens back in when it expires.
#[test]
fn a_revoked_token_is_refused_until_its_entry_goes() {
    let proxy = Proxy::start(&revocation_config("revoked"));
    let one = hs_token("alice", "t-1");
    let two = hs_token("alice", "t-2");
    let request = |token: &str| proxy.get("/api", &[("authorization", &format!("Bearer {token}"))]);
    let first = request(&one);
    assert_eq!(first.status, 200, "{first:?}");

    let put = proxy.admin("PUT", "/kv/revoked/jti:t-1", b"leaked in a log", None);
    assert_eq!(put.status, 200, "{put:?}");
    assert_eq!(put.json()["ttl_ms"], serde_json::Value::Null);
    let refused = request(&one);
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(refused.header("www-authenticate").unwrap().contains("revoked (by its jti)"), "{refused:?}");
    assert_eq!(request(&two).status, 200, "only that token");
    assert_eq!(proxy.admin("PUT", "/kv/revoked/jti:t-1", b"x", Some("wrong-token")).status, 401);

    // A reload keeps the store's contents.
    assert_eq!(proxy.admin("POST", "/config/reload", b"", None).status, 200);
    assert_eq!(request(&one).status, 401, "still revoked after a reload");
    let entry = proxy.admin("GET", "/kv/revoked/jti%3At-1", b"", None);
    assert_eq!(entry.json()["value"], "leaked in a log", "{entry:?}");

    // A subject: all its tokens. The listing shows both entries, in order,
    // with the time each has left.
    assert_eq!(proxy.admin("PUT", "/kv/revoked/sub:alice?ttl_secs=3600", b"", None).status, 200);
    assert_eq!(request(&two).status, 401);
    let listing = proxy.admin("GET", "/kv/revoked", b"", None).json();
    assert_eq!(
        (listing["keys"][0]["key"].as_str(), listing["keys"][1]["key"].as_str()),
        (Some("jti:t-1"), Some("sub:alice"))
    );
    assert_eq!(listing["keys"][0]["ttl_ms"], serde_json::Value::Null, "{listing}");
    assert!(listing["keys"][1]["ttl_ms"].as_u64().unwrap() > 3_000_000, "{listing}");
    proxy.wait_for_metrics(&["cascade_kv_keys{store=\"revoked\"} 2"]);
    // Revoked for a second instead: once that has passed, the tokens are
    // let in again.
    assert_eq!(proxy.admin("PUT", "/kv/revoked/sub:alice?ttl_secs=1", b"", None).status, 200);
    eventually("the subject's entry to expire", Duration::from_secs(30), || request(&two).status == 200);
    assert_eq!(request(&one).status, 401, "the token's own entry has no TTL");
    proxy.wait_for_metrics(&["cascade_kv_keys{store=\"revoked\"} 1"]);

    let deleted = proxy.admin("DELETE", "/kv/revoked/jti:t-1", b"", None);
    assert_eq!(deleted.status, 200, "{deleted:?}");
    assert_eq!(request(&one).status, 200);
    assert_eq!(proxy.admin("DELETE", "/kv/revoked/jti:t-1", b"", None).status, 404);
    let stores = proxy.admin("GET", "/kv", b"", None).json();
    assert_eq!(stores["stores"][0]["name"], "revoked");
    assert_eq!(stores["stores"][0]["filters_may_write"], false);
}

/// A route naming a store that is not configured, or one that filters may
/// write (any filter could take a token off it), is refused when the
/// config loads, and the error says where.
#[test]
fn a_revocation_store_must_exist_and_be_read_only_to_filters() {
    let writable = |mut config: ProxyConfig| {
        config.main_extra = config.main_extra.replace("filters_may_write = false\n", "");
        config
    };
    for (config, expected) in [
        (revocation_config("revokd"), "\"revokd\" is not configured in [kv_stores]"),
        (writable(revocation_config("revoked")), "\"revoked\" must be read-only to filters"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = config.write(dir.path(), free_port());
        let out = run_cascade(&["check", "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("routes/test.toml:") && stderr.contains(expected), "{stderr}");
    }
}

const PROBE_ROUTES: &str = "[[route]]\nname = \"probe\"\npath_prefix = \"/\"\nupstream = \"origin\"\n\
                            [[route.filters]]\nmodule = \"kv_probe\"\nconfig = { check_writes = \"counters\" }\n";

/// The stores, and a deadline no call misses on a busy machine: 200
/// requests arrive from 8 threads at once.
const STORES: &str = "\n[kv_stores.counters]\nmax_keys = 3\nmax_value_bytes = 8\n\n\
                      [kv_stores.flags]\nfilters_may_write = false\n\n[limits]\nfilter_timeout_ms = 10000\n";

/// A filter's view of the stores: increments from concurrent requests on
/// different instances are each counted once, the bounds refuse what does
/// not fit (and say why), a read-only store takes the admin API's writes
/// only, and `check-config`'s writes are not made.
#[test]
fn filters_share_stores_within_their_bounds() {
    let proxy = Arc::new(Proxy::start(&ProxyConfig::new(PROBE_ROUTES, &["kv_probe"]).with_admin().with_main(STORES)));
    let op = |proxy: &Proxy, op: &str| {
        let reply = proxy.get("/", &[("x-kv", op)]);
        (reply.status, reply.body)
    };
    assert_eq!(op(&proxy, "get counters checked"), (200, "None".into()), "check-config's write was not made");

    let threads: Vec<_> = (0..8)
        .map(|_| {
            let proxy = proxy.clone();
            std::thread::spawn(move || {
                (0..25).map(|_| op(&proxy, "incr counters hits 1").1.parse::<u32>().unwrap()).collect::<Vec<_>>()
            })
        })
        .collect();
    let mut sums: Vec<u32> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    sums.sort_unstable();
    assert_eq!(sums, (1..=200).collect::<Vec<_>>(), "every increment counted once, none lost");

    assert_eq!(
        op(&proxy, "set counters word 123456789").1,
        "ValueTooLarge(8): the value is longer than the store's max_value_bytes (8)"
    );
    assert_eq!(op(&proxy, "set counters word abc"), (200, "ok".into()));
    assert!(op(&proxy, "incr counters word 1").1.starts_with("NotANumber"), "a counter must hold a number");
    assert_eq!(op(&proxy, "set counters window 1 60000"), (200, "ok".into()));
    let full = op(&proxy, "set counters fourth 1");
    assert_eq!(full, (409, "StoreFull(\"counters\"): key-value store \"counters\" is full".into()));
    assert_eq!(op(&proxy, "get counters hits"), (200, "Some(\"200\")".into()), "a full store keeps its keys");
    let window = proxy.admin("GET", "/kv/counters/window", b"", None).json();
    assert!((1..=60_000).contains(&window["ttl_ms"].as_u64().unwrap()), "{window}");
    assert_eq!(op(&proxy, "delete counters word"), (200, "true".into()));
    assert_eq!(op(&proxy, "set counters fourth 1"), (200, "ok".into()), "room again");

    assert!(op(&proxy, "set flags beta on").1.starts_with("ReadOnly"));
    assert_eq!(proxy.admin("PUT", "/kv/flags/beta", b"on", None).status, 200);
    assert_eq!(op(&proxy, "get flags beta"), (200, "Some(\"on\")".into()));
    assert!(op(&proxy, "get nowhere k").1.starts_with("UnknownStore"));

    // The admin API's errors say what was wrong.
    let unknown = proxy.admin("PUT", "/kv/nowhere/k", b"v", None);
    assert_eq!((unknown.status, unknown.json()["error"].as_str()), (404, Some("no key-value store named \"nowhere\"")));
    let full = proxy.admin("PUT", "/kv/counters/fifth", b"v", None);
    assert_eq!(full.status, 507, "{full:?}");
    let long = proxy.admin("PUT", "/kv/counters/hits", b"123456789", None);
    assert_eq!(long.status, 400, "{long:?}");
    assert!(long.json()["error"].as_str().unwrap().contains("max_value_bytes (8)"), "{long:?}");
    let key = format!("/kv/flags/{}", "k".repeat(257));
    assert!(proxy.admin("PUT", &key, b"v", None).json()["error"].as_str().unwrap().contains("more than 256"));
    assert_eq!(proxy.admin("PUT", "/kv/flags/t?ttl_secs=0", b"v", None).status, 400);
    assert_eq!(proxy.admin("POST", "/kv/flags/t", b"v", None).status, 405);
    proxy.wait_for_metrics(&["cascade_kv_keys{store=\"counters\"} 3", "cascade_kv_keys{store=\"flags\"} 1"]);
}

/// A store with a `file` keeps what the admin API and filters wrote across
/// a restart, a kill included: an admin write answers once it is on disk,
/// a filter's reaches the file within a second. A reload that would read a
/// file that is not a store's is refused, naming it, and nothing changes.
#[test]
fn a_store_with_a_file_survives_a_restart() {
    let stores = "\n[kv_stores.counters]\nfile = \"kv/counters.json\"\n\n\
                  [kv_stores.flags]\nfilters_may_write = false\nfile = \"kv/flags.json\"\n";
    let proxy = Proxy::start(&ProxyConfig::new(PROBE_ROUTES, &["kv_probe"]).with_admin().with_main(stores));
    let op = |proxy: &Proxy, op: &str| proxy.get("/", &[("x-kv", op)]).body;
    assert_eq!(proxy.admin("PUT", "/kv/flags/beta", b"on", None).status, 200);
    assert_eq!(proxy.admin("PUT", "/kv/flags/brief?ttl_secs=3600", b"x", None).status, 200);
    for expected in ["1", "2", "3"] {
        assert_eq!(op(&proxy, "incr counters hits 1"), expected);
    }
    let counters = proxy.dir.path().join("kv/counters.json");
    eventually("the filter's increments to reach the file", Duration::from_secs(30), || {
        std::fs::read_to_string(&counters).is_ok_and(|text| text.contains(r#""hits":{"value":"3""#))
    });

    let proxy = proxy.restart();
    assert_eq!(op(&proxy, "get flags beta"), "Some(\"on\")");
    let brief = proxy.admin("GET", "/kv/flags/brief", b"", None).json();
    let ttl = brief["ttl_ms"].as_u64().unwrap();
    assert!(ttl > 3_000_000 && ttl <= 3_600_000, "the TTL counts on from before the restart: {brief}");
    assert_eq!(op(&proxy, "incr counters hits 1"), "4");

    let main = proxy.dir.path().join("cascade.toml");
    let text = std::fs::read_to_string(&main).unwrap();
    std::fs::write(proxy.dir.path().join("kv/extra.json"), "not json").unwrap();
    std::fs::write(&main, format!("{text}\n[kv_stores.extra]\nfile = \"kv/extra.json\"\n")).unwrap();
    let refused = proxy.admin("POST", "/config/reload", b"", None);
    assert_eq!(refused.status, 400, "{refused:?}");
    let message = refused.json()["error"].as_str().unwrap().to_string();
    assert!(
        message.contains("kv_stores.extra") && message.contains("extra.json is not a key-value store's file"),
        "{message}"
    );
    assert_eq!(op(&proxy, "get counters hits"), "Some(\"4\")", "the old stores keep serving");
}
