//! JWT verification against configured keysets (jsonwebtoken).
//!
//! A token is checked in this order: well-formed header, `alg` on the
//! keyset's allow-list, a key of the matching type (and `kid`, when both
//! sides have one; a JWKS key also only for its own `alg`, and never one
//! published for encryption), signature, then `exp`/`nbf` with leeway, `iss`
//! and `aud` (both required in the token when the keyset configures them).
//! An HMAC token is never checked against an RSA or EC key (no algorithm
//! confusion), and `alg: none` is not an algorithm at all.
//!
//! Clients send the same token on every request, so each keyset remembers
//! the tokens it has verified ([`VerifiedTokens`], like Envoy's
//! `jwt_cache_config`): a repeat costs a lookup and an expiry check instead
//! of the signature, base64 and JSON work.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode};

use super::BoundedMap;
use crate::config::{KeysetConfig, SecretSource};

/// The shortest HMAC key accepted, from a secret or a JWKS (RFC 7518 3.2:
/// at least the hash's size, 256 bits for HS256).
const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Why a token was refused; mirrors the WIT `verify-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no keyset named {0:?}")]
    UnknownKeyset(String),
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("algorithm {0} is not allowed")]
    AlgorithmNotAllowed(String),
    #[error("no key matches the token")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn kind_of(alg: Algorithm) -> KeyKind {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => KeyKind::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => KeyKind::Rsa,
        ES256 | ES384 => KeyKind::Ec,
        EdDSA => KeyKind::Ed,
    }
}

struct Key {
    kid: Option<String>,
    kind: KeyKind,
    /// The one algorithm a JWKS entry names in its `alg`, if it names one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl Key {
    /// Whether this key may verify a token signed with `alg`: a key of the
    /// algorithm's type, and that algorithm if the key names one.
    fn verifies(&self, alg: Algorithm) -> bool {
        self.kind == kind_of(alg) && self.alg.is_none_or(|own| own == alg)
    }
}

/// A keyset ready to verify tokens.
pub struct Keyset {
    pub name: String,
    /// The allow-list, each with its validation rules, built once.
    algorithms: Vec<(Algorithm, Validation)>,
    keys: Vec<Key>,
    verified: VerifiedTokens,
}

/// Tokens this keyset has verified, with their claims, each kept until its
/// `exp` plus the leeway. Only successes are kept, and the whole token is the
/// key, so nothing but the exact bytes that passed can hit. The cache lives
/// in the keyset, so a config reload (new keys, new rules) starts it empty.
/// Memory is bounded by `capacity` entries of a token of at most
/// [`MAX_CACHED_TOKEN`] bytes and its claims, re-serialized from the token's
/// payload (so of the same order).
struct VerifiedTokens(BoundedMap<Box<str>, VerifiedToken>);

struct VerifiedToken {
    claims: Box<str>,
    /// Unix seconds after which the token counts as expired.
    expires_after: u64,
}

/// Longer tokens are verified every time rather than kept.
const MAX_CACHED_TOKEN: usize = 4096;

impl VerifiedTokens {
    fn new(capacity: usize) -> Self {
        Self(BoundedMap::new(capacity))
    }

    /// The remembered outcome for `token` at `now`: its claims, or `Expired`
    /// once it has run out (as a fresh check would say).
    fn lookup(&self, token: &str, now: u64) -> Option<Result<String, VerifyError>> {
        self.0.get(
            token,
            |hit| {
                if now > hit.expires_after { Err(VerifyError::Expired) } else { Ok(hit.claims.to_string()) }
            },
        )
    }

    fn remember(&self, token: &str, claims: &str, expires_after: u64, now: u64) {
        if token.len() <= MAX_CACHED_TOKEN {
            let entry = VerifiedToken { claims: claims.into(), expires_after };
            // Expired tokens go first when the cache is full.
            self.0.insert(token.into(), entry, |_, t| t.expires_after >= now);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl std::fmt::Debug for Keyset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyset")
            .field("name", &self.name)
            .field("algorithms", &self.algorithms.iter().map(|(alg, _)| alg).collect::<Vec<_>>())
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Read an HMAC secret from its source.
pub fn read_secret(source: &SecretSource) -> Result<Vec<u8>, String> {
    match source {
        SecretSource::Env(var) => {
            std::env::var(var).map(String::into_bytes).map_err(|_| format!("environment variable {var} is not set"))
        }
        SecretSource::File(path) => std::fs::read(path)
            .map(|mut bytes| {
                while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
                    bytes.pop();
                }
                bytes
            })
            .map_err(|e| format!("cannot read secret file {}: {e}", path.display())),
    }
}

impl Keyset {
    /// Read the keyset's key material and check it against its algorithms.
    pub fn build(config: &KeysetConfig) -> Result<Self, String> {
        let mut algorithms = Vec::new();
        for name in &config.algorithms {
            let alg: Algorithm =
                name.parse().map_err(|_| format!("unknown algorithm {name:?} (HS256, RS256, ES256, ...)"))?;
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            return Err("`algorithms` must list at least one algorithm".into());
        }
        let mut keys = Vec::new();
        if let Some(source) = &config.secret {
            let secret = read_secret(source)?;
            if secret.len() < MIN_HMAC_SECRET_BYTES {
                return Err("an HMAC secret must be at least 32 bytes".into());
            }
            keys.push(Key { kid: None, kind: KeyKind::Hmac, alg: None, key: DecodingKey::from_secret(&secret) });
        }
        for path in &config.public_key_files {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let (kind, key) = if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                (KeyKind::Rsa, key)
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                (KeyKind::Ec, key)
            } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
                (KeyKind::Ed, key)
            } else {
                return Err(format!("{} is not an RSA, EC or Ed25519 public key in PEM", path.display()));
            };
            keys.push(Key { kid: None, kind, alg: None, key });
        }
        if let Some(path) = &config.jwks_file {
            keys.extend(jwks_keys(path)?);
        }
        if keys.is_empty() {
            return Err("a keyset needs a secret, public_key_files or a jwks_file".into());
        }
        for alg in &algorithms {
            if !keys.iter().any(|k| k.verifies(*alg)) {
                return Err(format!("algorithm {alg:?} is allowed but the keyset has no key for it"));
            }
        }
        let algorithms = algorithms.into_iter().map(|alg| (alg, validation(config, alg))).collect();
        Ok(Self { name: config.name.clone(), algorithms, keys, verified: VerifiedTokens::new(config.cache_size) })
    }

    /// Verify `token`; on success, its claims as JSON text.
    pub fn verify(&self, token: &str) -> Result<String, VerifyError> {
        self.verify_at(token, unix_now())
    }

    /// [`Keyset::verify`] with the cache consulted at `now` (Unix seconds).
    /// The signature and claims checks themselves use the real clock.
    fn verify_at(&self, token: &str, now: u64) -> Result<String, VerifyError> {
        if let Some(outcome) = self.verified.lookup(token, now) {
            return outcome;
        }
        let (claims, expires_after) = self.check(token)?;
        let claims_text = claims.to_string();
        // `exp` is required, so a verified token has one.
        if let Some(expires_after) = expires_after {
            self.verified.remember(token, &claims_text, expires_after, now);
        }
        Ok(claims_text)
    }

    /// The full check: the claims of a valid token, and when it expires
    /// (its `exp` plus the leeway).
    fn check(&self, token: &str) -> Result<(serde_json::Value, Option<u64>), VerifyError> {
        let header = decode_header(token).map_err(|e| VerifyError::Malformed(describe(e.kind())))?;
        let Some((_, validation)) = self.algorithms.iter().find(|(alg, _)| *alg == header.alg) else {
            return Err(VerifyError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        };
        let candidates = self
            .keys
            .iter()
            .filter(|k| k.verifies(header.alg))
            .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid);
        let mut tried = false;
        for key in candidates {
            tried = true;
            match decode::<serde_json::Value>(token, &key.key, validation) {
                Ok(data) => {
                    // A configured issuer or audience must be in the token:
                    // jsonwebtoken checks them only when they are present.
                    // Checked here, after the signature, in a fixed order.
                    if validation.iss.is_some() && !data.claims.get("iss").is_some_and(serde_json::Value::is_string) {
                        return Err(VerifyError::WrongIssuer);
                    }
                    if validation.aud.is_some() && !has_audience(&data.claims) {
                        return Err(VerifyError::WrongAudience);
                    }
                    // A fractional `exp` is rounded, as jsonwebtoken does.
                    let exp = data
                        .claims
                        .get("exp")
                        .and_then(|e| e.as_u64().or_else(|| e.as_f64().map(|f| f.round() as u64)));
                    return Ok((data.claims, exp.map(|exp| exp.saturating_add(validation.leeway))));
                }
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(map_error(e.kind())),
            }
        }
        Err(if tried { VerifyError::BadSignature } else { VerifyError::UnknownKey })
    }
}

/// The signing keys of the JWKS document at `path`. The keys are filtered
/// on their JSON before jsonwebtoken reads them, so that a key it has no type
/// for, published for encryption, does not make the whole document unreadable.
/// Skipped: a key published for encryption (`use` other than `sig`, RFC 7517
/// 4.2), one whose `key_ops` leave out `verify` (4.3), and one that names an
/// algorithm that is not a signature algorithm (4.4). A key that names its
/// algorithm verifies only that one.
fn jwks_keys(path: &std::path::Path) -> Result<Vec<Key>, String> {
    let where_ = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {where_}: {e}"))?;
    let document: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{where_} is not a JWKS document: {e}"))?;
    let entries = document
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| format!("{where_} is not a JWKS document: no \"keys\" list"))?;
    let mut keys = Vec::new();
    for entry in entries {
        let field = |name: &str| entry.get(name).and_then(serde_json::Value::as_str);
        if field("use").is_some_and(|u| u != "sig") {
            continue;
        }
        if let Some(ops) = entry.get("key_ops").and_then(serde_json::Value::as_array)
            && !ops.iter().any(|op| op == "verify")
        {
            continue;
        }
        let alg = match field("alg") {
            Some(name) => match name.parse::<Algorithm>() {
                Ok(alg) => Some(alg),
                Err(_) => continue,
            },
            None => None,
        };
        let name = field("kid").map_or_else(|| "a key without kid".to_string(), |kid| format!("key {kid:?}"));
        let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| format!("{where_}: {name}: {e}"))?;
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(_) => KeyKind::Ec,
            AlgorithmParameters::OctetKeyPair(_) => KeyKind::Ed,
            AlgorithmParameters::OctetKey(octets) => {
                // The same floor as a configured secret: base64url, 4 chars per 3 bytes.
                if octets.value.trim_end_matches('=').len() * 3 / 4 < MIN_HMAC_SECRET_BYTES {
                    return Err(format!("{where_}: {name}: an HMAC key must be at least 32 bytes"));
                }
                KeyKind::Hmac
            }
        };
        if alg.is_some_and(|alg| kind_of(alg) != kind) {
            return Err(format!("{where_}: {name}: its alg does not fit its key type"));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("{where_}: {name}: bad key: {e}"))?;
        keys.push(Key { kid: jwk.common.key_id.clone(), kind, alg, key });
    }
    Ok(keys)
}

/// Sign `claims` with the keyset's HMAC secret (for `cascade token`, which
/// mints demo and test tokens). The keyset's issuer and first audience are
/// added when the claims do not set them.
pub fn sign_with_secret(config: &KeysetConfig, mut claims: serde_json::Value) -> Result<String, String> {
    let source =
        config.secret.as_ref().ok_or_else(|| format!("keyset {:?} has no HMAC secret to sign with", config.name))?;
    let alg = config
        .algorithms
        .iter()
        .filter_map(|a| a.parse::<Algorithm>().ok())
        .find(|a| kind_of(*a) == KeyKind::Hmac)
        .ok_or_else(|| format!("keyset {:?} allows no HS algorithm", config.name))?;
    if let Some(object) = claims.as_object_mut() {
        if let Some(iss) = &config.issuer {
            object.entry("iss").or_insert_with(|| iss.clone().into());
        }
        if let Some(aud) = config.audience.first() {
            object.entry("aud").or_insert_with(|| aud.clone().into());
        }
    }
    let secret = read_secret(source)?;
    encode(&Header::new(alg), &claims, &EncodingKey::from_secret(&secret)).map_err(|e| e.to_string())
}

/// The checks for tokens signed with `alg`: only that algorithm, `exp`
/// required, `exp` and `nbf` with leeway, and the keyset's issuer and audience
/// (whose presence [`Keyset::check`] adds: only one missing claim could be
/// reported, and jsonwebtoken would pick which at random).
fn validation(config: &KeysetConfig, alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.algorithms = vec![alg];
    validation.leeway = config.leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp"]);
    match &config.issuer {
        Some(iss) => validation.set_issuer(&[iss]),
        None => validation.iss = None,
    }
    if config.audience.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&config.audience);
    }
    validation
}

/// Whether `claims` has an `aud` jsonwebtoken could check: a string, or a
/// list of strings.
fn has_audience(claims: &serde_json::Value) -> bool {
    match claims.get("aud") {
        Some(serde_json::Value::String(_)) => true,
        Some(serde_json::Value::Array(list)) => list.iter().all(serde_json::Value::is_string),
        _ => false,
    }
}

fn map_error(kind: &ErrorKind) -> VerifyError {
    match kind {
        ErrorKind::ExpiredSignature => VerifyError::Expired,
        ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
        ErrorKind::InvalidIssuer => VerifyError::WrongIssuer,
        ErrorKind::InvalidAudience => VerifyError::WrongAudience,
        ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => VerifyError::BadSignature,
        other => VerifyError::Malformed(describe(other)),
    }
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidToken => "not three base64url parts".into(),
        ErrorKind::Base64(e) => format!("bad base64: {e}"),
        ErrorKind::Json(e) => format!("bad JSON: {e}"),
        ErrorKind::Utf8(_) => "not UTF-8".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("missing claim {c:?}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Location;
    use std::time::Duration;

    fn keyset_config(dir: &std::path::Path, cache_size: usize) -> KeysetConfig {
        let secret = dir.join("secret");
        std::fs::write(&secret, "a-test-secret-that-is-long-enough-for-hs256").unwrap();
        KeysetConfig {
            name: "test".into(),
            algorithms: vec!["HS256".into()],
            secret: Some(SecretSource::File(secret)),
            public_key_files: vec![],
            jwks_file: None,
            issuer: None,
            audience: vec![],
            leeway: Duration::ZERO,
            cache_size,
            at: Location { file: "test".into(), line: 1, key: "jwt.keysets.test".into() },
        }
    }

    fn token(config: &KeysetConfig, sub: &str, exp: u64) -> String {
        sign_with_secret(config, serde_json::json!({"sub": sub, "exp": exp})).unwrap()
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/jwt").join(name)
    }

    fn rsa_signed(private_pem: &str, kid: Option<&str>, claims: serde_json::Value) -> String {
        let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture(private_pem)).unwrap()).unwrap();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_string);
        encode(&header, &claims, &key).unwrap()
    }

    #[test]
    fn a_configured_issuer_or_audience_must_be_in_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = keyset_config(dir.path(), 0);
        config.issuer = Some("https://issuer.example".into());
        config.audience = vec!["api".into()];
        let keyset = Keyset::build(&config).unwrap();
        let secret = EncodingKey::from_secret(b"a-test-secret-that-is-long-enough-for-hs256");
        let exp = unix_now() + 60;
        let signed = |claims: serde_json::Value| encode(&Header::default(), &claims, &secret).unwrap();

        let both = signed(serde_json::json!({"exp": exp, "iss": "https://issuer.example", "aud": "api"}));
        assert!(keyset.verify(&both).is_ok());
        let no_issuer = signed(serde_json::json!({"exp": exp, "aud": "api"}));
        assert_eq!(keyset.verify(&no_issuer), Err(VerifyError::WrongIssuer));
        // Both missing: always the issuer first, in every keyset built (not
        // whichever of the two each keyset's hash set of required claims yields).
        let neither = signed(serde_json::json!({"exp": exp}));
        for _ in 0..20 {
            assert_eq!(Keyset::build(&config).unwrap().verify(&neither), Err(VerifyError::WrongIssuer));
        }
        let no_audience = signed(serde_json::json!({"exp": exp, "iss": "https://issuer.example"}));
        assert_eq!(keyset.verify(&no_audience), Err(VerifyError::WrongAudience));
        // An audience that is not a string or a list of strings is no audience.
        let odd_audience = signed(serde_json::json!({"exp": exp, "iss": "https://issuer.example", "aud": 5}));
        assert_eq!(keyset.verify(&odd_audience), Err(VerifyError::WrongAudience));

        // Without an issuer or audience configured, neither is required.
        let plain = Keyset::build(&keyset_config(dir.path(), 0)).unwrap();
        assert!(plain.verify(&signed(serde_json::json!({"exp": exp}))).is_ok());
    }

    #[test]
    fn a_secret_comes_from_the_environment_or_says_which_variable_is_missing() {
        // PATH is set wherever tests run; setting a variable here would race
        // with the other tests' threads.
        let path = std::env::var("PATH").expect("PATH is set");
        assert_eq!(read_secret(&SecretSource::Env("PATH".into())), Ok(path.into_bytes()));
        let missing = read_secret(&SecretSource::Env("CASCADE_TEST_UNSET_JWT_SECRET".into())).unwrap_err();
        assert_eq!(missing, "environment variable CASCADE_TEST_UNSET_JWT_SECRET is not set");
    }

    #[test]
    fn leeway_lets_a_token_just_past_exp_through() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = keyset_config(dir.path(), 0);
        let just_expired = token(&config, "alice", unix_now() - 5);
        assert_eq!(Keyset::build(&config).unwrap().verify(&just_expired), Err(VerifyError::Expired));
        config.leeway = Duration::from_secs(30);
        assert!(Keyset::build(&config).unwrap().verify(&just_expired).is_ok());
        let long_expired = token(&config, "alice", unix_now() - 120);
        assert_eq!(Keyset::build(&config).unwrap().verify(&long_expired), Err(VerifyError::Expired));
    }

    #[test]
    fn a_jwks_key_verifies_by_kid_for_its_own_algorithm_and_only_for_signing() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = keyset_config(dir.path(), 0);
        config.secret = None;
        config.algorithms = vec!["RS256".into()];
        config.jwks_file = Some(fixture("jwks.json"));
        let keyset = Keyset::build(&config).unwrap();
        let claims = serde_json::json!({"sub": "alice", "exp": unix_now() + 60});

        // The signing key, named by its kid or found without one.
        assert!(keyset.verify(&rsa_signed("rsa-private.pem", Some("signing-2026"), claims.clone())).is_ok());
        assert!(keyset.verify(&rsa_signed("rsa-private.pem", None, claims.clone())).is_ok());
        assert_eq!(
            keyset.verify(&rsa_signed("rsa-private.pem", Some("retired-2025"), claims.clone())),
            Err(VerifyError::UnknownKey)
        );
        // The JWKS also publishes the other key, for encryption (`use: enc`)
        // and for wrapping keys (`key_ops` without `verify`), and an X25519
        // key that jsonwebtoken cannot read (skipped, not a load error): a
        // token signed with the other key's private half finds no key.
        for kid in ["encryption-2026", "wrapping-2026"] {
            let token = rsa_signed("other-rsa-private.pem", Some(kid), claims.clone());
            assert_eq!(keyset.verify(&token), Err(VerifyError::UnknownKey), "{kid}");
        }
        assert_eq!(
            keyset.verify(&rsa_signed("other-rsa-private.pem", None, claims.clone())),
            Err(VerifyError::BadSignature)
        );

        // A key whose `alg` is RS256 is no key for RS384: allowing RS384 is
        // a configuration error, not a keyset that refuses every RS384 token.
        config.algorithms = vec!["RS256".into(), "RS384".into()];
        let error = Keyset::build(&config).unwrap_err();
        assert!(error.contains("RS384") && error.contains("no key"), "{error}");
    }

    #[test]
    fn a_jwks_key_that_cannot_be_right_is_a_load_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = keyset_config(dir.path(), 0);
        config.secret = None;
        config.jwks_file = Some(dir.path().join("jwks.json"));
        let cases = [
            (r#"{"kty": "oct", "kid": "short", "k": "c2hvcnQtc2VjcmV0"}"#, "at least 32 bytes"),
            (
                r#"{"kty": "oct", "kid": "mixed", "alg": "RS256", "k": "YS1qd2tzLWhtYWMta2V5LXRoYXQtaXMtbG9uZy1lbm91Z2gtZm9yLWhzMjU2"}"#,
                "does not fit",
            ),
        ];
        for (key, expected) in cases {
            std::fs::write(dir.path().join("jwks.json"), format!(r#"{{"keys": [{key}]}}"#)).unwrap();
            let error = Keyset::build(&config).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        // "a-jwks-hmac-key-that-is-long-enough-for-hs256", base64url-encoded.
        let long =
            r#"{"kty": "oct", "kid": "long", "k": "YS1qd2tzLWhtYWMta2V5LXRoYXQtaXMtbG9uZy1lbm91Z2gtZm9yLWhzMjU2"}"#;
        std::fs::write(dir.path().join("jwks.json"), format!(r#"{{"keys": [{long}]}}"#)).unwrap();
        let keyset = Keyset::build(&config).unwrap();
        let header = Header { kid: Some("long".into()), ..Header::default() };
        let secret = EncodingKey::from_secret(b"a-jwks-hmac-key-that-is-long-enough-for-hs256");
        let token = encode(&header, &serde_json::json!({"exp": unix_now() + 60}), &secret).unwrap();
        assert!(keyset.verify(&token).is_ok());
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let config = keyset_config(dir.path(), 16);
        let keyset = Keyset::build(&config).unwrap();
        let now = unix_now();
        let alice = token(&config, "alice", now + 60);

        let claims = keyset.verify_at(&alice, now).unwrap();
        assert!(claims.contains("\"alice\""), "{claims}");
        assert_eq!(keyset.verified.len(), 1);
        // Past exp (leeway 0) the remembered token is refused like a fresh
        // one; only the cache can say so, since the check itself uses the
        // real clock.
        assert_eq!(keyset.verify_at(&alice, now + 61), Err(VerifyError::Expired));

        // A fractional exp is rounded, as jsonwebtoken's own check does.
        let bob = sign_with_secret(&config, serde_json::json!({"sub": "bob", "exp": now as f64 + 60.6})).unwrap();
        keyset.verify_at(&bob, now).unwrap();
        assert!(keyset.verify_at(&bob, now + 61).is_ok());
        assert_eq!(keyset.verify_at(&bob, now + 62), Err(VerifyError::Expired));
    }

    #[test]
    fn only_exact_verified_tokens_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let config = keyset_config(dir.path(), 16);
        let keyset = Keyset::build(&config).unwrap();
        let now = unix_now();
        let alice = token(&config, "alice", now + 60);
        keyset.verify(&alice).unwrap();

        // The same payload with its signature changed is checked, not looked up.
        let (head, _) = alice.rsplit_once('.').unwrap();
        let forged = format!("{head}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(keyset.verify(&forged), Err(VerifyError::BadSignature));
        let expired = token(&config, "bob", now - 10);
        assert_eq!(keyset.verify(&expired), Err(VerifyError::Expired));
        assert_eq!(keyset.verified.len(), 1, "failures are never kept");
    }

    #[test]
    fn the_cache_stays_within_its_size_and_can_be_turned_off() {
        let dir = tempfile::tempdir().unwrap();
        let now = unix_now();
        let config = keyset_config(dir.path(), 2);
        let keyset = Keyset::build(&config).unwrap();
        for i in 0..5 {
            keyset.verify(&token(&config, &format!("user{i}"), now + 60)).unwrap();
            assert!(keyset.verified.len() <= 2);
        }
        let config = keyset_config(dir.path(), 0);
        let keyset = Keyset::build(&config).unwrap();
        keyset.verify(&token(&config, "alice", now + 60)).unwrap();
        assert_eq!(keyset.verified.len(), 0);
    }
}
