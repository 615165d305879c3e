//! JWT verification against configured keysets (jsonwebtoken).
//!
//! A token is checked in this order: well-formed header, `alg` on the
//! keyset's allow-list, a key of the matching type (and `kid`, when both
//! sides have one), signature, then `exp`/`nbf` with leeway, `iss` and `aud`.
//! An HMAC token is never checked against an RSA or EC key (no algorithm
//! confusion), and `alg: none` is not an algorithm at all.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode};

use crate::config::{KeysetConfig, SecretSource};

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
    key: DecodingKey,
}

/// A keyset ready to verify tokens.
pub struct Keyset {
    pub name: String,
    /// The allow-list, each with its validation rules, built once.
    algorithms: Vec<(Algorithm, Validation)>,
    keys: Vec<Key>,
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
            if secret.len() < 32 {
                return Err("an HMAC secret must be at least 32 bytes".into());
            }
            keys.push(Key { kid: None, kind: KeyKind::Hmac, key: DecodingKey::from_secret(&secret) });
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
            keys.push(Key { kid: None, kind, key });
        }
        if let Some(path) = &config.jwks_file {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let set: JwkSet =
                serde_json::from_str(&text).map_err(|e| format!("{} is not a JWKS document: {e}", path.display()))?;
            for jwk in &set.keys {
                let kind = match jwk.algorithm {
                    AlgorithmParameters::RSA(_) => KeyKind::Rsa,
                    AlgorithmParameters::EllipticCurve(_) => KeyKind::Ec,
                    AlgorithmParameters::OctetKeyPair(_) => KeyKind::Ed,
                    AlgorithmParameters::OctetKey(_) => KeyKind::Hmac,
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{}: bad key: {e}", path.display()))?;
                keys.push(Key { kid: jwk.common.key_id.clone(), kind, key });
            }
        }
        if keys.is_empty() {
            return Err("a keyset needs a secret, public_key_files or a jwks_file".into());
        }
        for alg in &algorithms {
            if !keys.iter().any(|k| k.kind == kind_of(*alg)) {
                return Err(format!("algorithm {alg:?} is allowed but the keyset has no key for it"));
            }
        }
        let algorithms = algorithms.into_iter().map(|alg| (alg, validation(config, alg))).collect();
        Ok(Self { name: config.name.clone(), algorithms, keys })
    }

    /// Verify `token`; on success, its claims as JSON text.
    pub fn verify(&self, token: &str) -> Result<String, VerifyError> {
        let header = decode_header(token).map_err(|e| VerifyError::Malformed(describe(e.kind())))?;
        let Some((_, validation)) = self.algorithms.iter().find(|(alg, _)| *alg == header.alg) else {
            return Err(VerifyError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        };
        let kind = kind_of(header.alg);
        let candidates = self
            .keys
            .iter()
            .filter(|k| k.kind == kind && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid));
        let mut tried = false;
        for key in candidates {
            tried = true;
            match decode::<serde_json::Value>(token, &key.key, validation) {
                Ok(data) => return Ok(data.claims.to_string()),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(map_error(e.kind())),
            }
        }
        Err(if tried { VerifyError::BadSignature } else { VerifyError::UnknownKey })
    }
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
/// required, `exp` and `nbf` with leeway, and the keyset's issuer and audience.
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
