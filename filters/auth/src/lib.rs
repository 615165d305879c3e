//! Bearer-token authentication: verify a JWT with a host keyset, enforce
//! issuer, audience and scopes, and forward chosen claims to the origin.
//! The config is documented in this crate's README.

use std::collections::BTreeMap;
use std::rc::Rc;

use cascade_filter::client::{check_cookie_name, check_header, cookie};
use cascade_filter::path::{check_prefix, has_segment_prefix};
use cascade_filter::{Filter, KvError, Reply, Request, Verdict, VerifyError, export_filter, jwt, kv};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The host keyset (`[jwt.keysets.<name>]`) that verifies tokens.
    keyset: String,
    /// Also accept the token from this cookie.
    #[serde(default)]
    cookie: Option<String>,
    /// Paths under these prefixes need no token.
    #[serde(default)]
    public_prefixes: Vec<String>,
    /// Required `iss`, on top of the keyset's own check.
    #[serde(default)]
    issuer: Option<String>,
    /// Required `aud` value, on top of the keyset's own check.
    #[serde(default)]
    audience: Option<String>,
    /// Scopes the token must carry (`scope` string or `scp` list).
    #[serde(default)]
    required_scopes: Vec<String>,
    /// Claim name -> request header to forward it in.
    #[serde(default)]
    forward_claims: BTreeMap<String, String>,
    /// A key-value store (`[kv_stores.<name>]`) of revoked tokens: a token
    /// is refused while the store holds `<claim>:<value>` for one of
    /// `revoked_claims` (written through the admin API, with a TTL as long
    /// as the tokens live).
    #[serde(default)]
    revocation_store: Option<String>,
    /// The claims looked up in `revocation_store`: `jti` revokes one
    /// token, `sub` every token of a subject.
    #[serde(default = "default_revoked_claims")]
    revoked_claims: Vec<String>,
    /// Remove `Authorization` before the request goes upstream.
    #[serde(default = "yes")]
    strip_authorization: bool,
    #[serde(default = "default_realm")]
    realm: String,
}

fn yes() -> bool {
    true
}

fn default_revoked_claims() -> Vec<String> {
    vec!["jti".into()]
}

fn default_realm() -> String {
    "cascade".into()
}

/// The config is shared, not copied, by each request's clone.
#[derive(Clone)]
pub struct Auth(Rc<Config>);

impl Filter for Auth {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.keyset.is_empty() {
            return Err("`keyset` must name a [jwt.keysets] entry".into());
        }
        if let Some(name) = &config.cookie {
            check_cookie_name(name)?;
        }
        for header in config.forward_claims.values() {
            check_header(header, "").map_err(|e| format!("forward_claims: {e}"))?;
        }
        for prefix in &config.public_prefixes {
            check_prefix(prefix).map_err(|e| format!("public_prefixes: {e}"))?;
        }
        if config.revocation_store.is_some() && config.revoked_claims.is_empty() {
            return Err("`revoked_claims` must name at least one claim to look up in `revocation_store`".into());
        }
        // The realm goes into a quoted header parameter as it is.
        if config.realm.bytes().any(|b| b == b'"' || b == b'\\' || !(b' '..=b'~').contains(&b)) {
            return Err(format!("realm {:?} must be printable ASCII without '\"' or '\\'", config.realm));
        }
        Ok(Self(Rc::new(config)))
    }

    fn check(&self) -> Result<(), String> {
        if let Err(VerifyError::UnknownKeyset(k)) = jwt::verify("", &self.0.keyset) {
            return Err(format!("keyset {k:?} is not configured in [jwt.keysets]"));
        }
        let Some(store) = self.0.revocation_store.as_deref() else { return Ok(()) };
        // A write from check-config is checked and not made: `Ok` means any
        // filter of any route could take a token off the list.
        match kv::set(store, "-", "", None) {
            Err(KvError::UnknownStore(s)) => Err(format!("revocation_store {s:?} is not configured in [kv_stores]")),
            Err(KvError::ReadOnly(_)) => Ok(()),
            _ => Err(format!(
                "revocation_store {store:?} must be read-only to filters (filters_may_write = false in \
                 [kv_stores.{store}]): any filter could take a token off it"
            )),
        }
    }

    fn on_request(&mut self, req: &Request) -> Verdict {
        let config = &*self.0;
        // Identity headers come from us only: never trust a client's copy.
        // (A trap further on undoes this with `fail-open`, as it undoes all
        // of a failed call's edits: auth must not run `fail-open`.)
        for header in config.forward_claims.values() {
            req.remove_header(header);
        }
        let path = req.path();
        if config.public_prefixes.iter().any(|p| has_segment_prefix(&path, p)) {
            // Unverified, the token is not for the origin either.
            if config.strip_authorization {
                req.remove_header("authorization");
            }
            return Verdict::Continue;
        }
        let header_token = match bearer_token(req) {
            Ok(token) => token,
            Err(malformed) => return self.challenge(400, Some(("invalid_request", malformed.into()))),
        };
        let from_header = header_token.is_some();
        let Some(token) = header_token.or_else(|| config.cookie.as_deref().and_then(|c| cookie(req, c))) else {
            return self.challenge(401, None);
        };
        let claims = match jwt::verify(&token, &config.keyset) {
            Ok(json) => Claims::parse(&json, config),
            // `check` refused this at load; a host that lost the keyset since
            // is a bug for the route's `on_error`.
            Err(VerifyError::UnknownKeyset(k)) => {
                panic!("auth: keyset {k:?} is not configured in the host")
            }
            // A token that verifies is b64token syntax (base64url and dots),
            // so the syntax is checked only here, off the path of good tokens.
            Err(_) if from_header && !is_b64token(&token) => {
                let malformed = "the bearer token has characters b64token does not allow";
                return self.challenge(400, Some(("invalid_request", malformed.into())));
            }
            Err(e) => return self.challenge(401, Some(("invalid_token", e.to_string()))),
        };
        if let Some(iss) = &config.issuer
            && claims.get("iss").as_str() != Some(iss)
        {
            return self.challenge(401, Some(("invalid_token", "wrong issuer".into())));
        }
        if let Some(aud) = &config.audience
            && !audiences(claims.get("aud")).any(|a| a == aud)
        {
            return self.challenge(401, Some(("invalid_token", "wrong audience".into())));
        }
        if let Some(store) = &config.revocation_store
            && let Some(refusal) = revoked(store, &config.revoked_claims, &claims)
        {
            return self.challenge(401, Some(("invalid_token", refusal)));
        }
        let granted = scopes(&claims);
        if config.required_scopes.iter().any(|s| !granted.contains(&s.as_str())) {
            return self.challenge(403, Some(("insufficient_scope", "missing a required scope".into())));
        }
        for (claim, header) in &config.forward_claims {
            if let Some(value) = claim_text(claims.get(claim))
                && let Err(e) = req.set_header(header, &value)
            {
                // A claim the host will not carry (a control character, too
                // long, too many headers): refuse, rather than trap and leave
                // the request to the route's `on_error`.
                let description = format!("claim {claim:?} cannot be forwarded: {e}");
                return self.challenge(401, Some(("invalid_token", description)));
            }
        }
        if config.strip_authorization {
            req.remove_header("authorization");
        }
        Verdict::Continue
    }
}

impl Auth {
    /// A 401 or 403 with an RFC 6750 `WWW-Authenticate` challenge.
    fn challenge(&self, status: u16, error: Option<(&str, String)>) -> Verdict {
        let mut value = format!("Bearer realm=\"{}\"", self.0.realm);
        let error = error.map(|(code, description)| (code, error_description(&description)));
        if let Some((code, description)) = &error {
            value.push_str(&format!(", error=\"{code}\", error_description=\"{description}\""));
            if *code == "insufficient_scope" {
                value.push_str(&format!(", scope=\"{}\"", self.0.required_scopes.join(" ")));
            }
        }
        let body = match &error {
            Some((code, description)) => {
                format!("{{\"error\":\"{code}\",\"error_description\":{description:?}}}")
            }
            None => "{\"error\":\"missing_token\"}".to_string(),
        };
        Verdict::Respond(
            Reply::new(status).header("www-authenticate", value).header("content-type", "application/json").body(body),
        )
    }
}

/// RFC 6750's `error_description`: printable ASCII without `"` or `\`, so
/// that it fits a quoted header parameter and, through `{:?}`, a JSON string.
/// A description can quote the token (a parse error), so anything else is
/// replaced and the length is capped.
fn error_description(text: &str) -> String {
    const MAX_CHARS: usize = 200;
    text.chars()
        .take(MAX_CHARS)
        .map(|c| match c {
            '"' | '\\' => '\'',
            ' '..='~' => c,
            _ => '?',
        })
        .collect()
}

/// The token of an `Authorization: Bearer` header, if there is one, or why
/// the header makes the request malformed (RFC 6750 `invalid_request`): it
/// is repeated, or has no token. (A token outside `b64token` syntax is
/// malformed too: see `is_b64token`.) Another scheme (`Basic`, say) is no
/// bearer token, and leaves the cookie to look at.
fn bearer_token(req: &Request) -> Result<Option<String>, &'static str> {
    let values = req.header_values("authorization");
    let value = match values.as_slice() {
        [] => return Ok(None),
        [value] => value,
        _ => return Err("more than one Authorization header"),
    };
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = token.trim_matches(' ');
    if token.is_empty() {
        return Err("the Bearer credentials hold no token");
    }
    Ok(Some(token.to_string()))
}

/// RFC 6750's `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// The claims this filter reads (`iss`, `aud`, the scopes and the forwarded
/// ones), out of a verified token's claims JSON. Other claims are skipped
/// without being built: this runs on every request.
struct Claims(Vec<(String, Value)>);

/// No such claim.
static ABSENT: Value = Value::Null;

impl Claims {
    fn parse(json: &str, config: &Config) -> Self {
        let mut de = serde_json::Deserializer::from_str(json);
        // The host verified and parsed this JSON, so it cannot fail here;
        // if it somehow did, no claim is present and the checks refuse.
        let claims =
            serde::de::DeserializeSeed::deserialize(ReadClaims(config), &mut de).and_then(|c| de.end().map(|()| c));
        Self(claims.unwrap_or_default())
    }

    /// A claim's value; with a repeated name the last one wins, as in a JSON map.
    fn get(&self, name: &str) -> &Value {
        self.0.iter().rev().find(|(n, _)| n == name).map_or(&ABSENT, |(_, v)| v)
    }
}

/// A claim's name, borrowed from the JSON unless it has escapes.
#[derive(Deserialize)]
struct ClaimName<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);

/// Deserializes a claims object, keeping only the claims `Config` reads.
struct ReadClaims<'a>(&'a Config);

impl ReadClaims<'_> {
    fn wanted(&self, claim: &str) -> bool {
        matches!(claim, "iss" | "aud" | "scope" | "scp")
            || self.0.forward_claims.contains_key(claim)
            || (self.0.revocation_store.is_some() && self.0.revoked_claims.iter().any(|c| c == claim))
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for ReadClaims<'_> {
    type Value = Vec<(String, Value)>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ReadClaims<'_> {
    type Value = Vec<(String, Value)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut claims = Vec::new();
        while let Some(ClaimName(name)) = map.next_key()? {
            if self.wanted(&name) {
                claims.push((name.into_owned(), map.next_value()?));
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(claims)
    }
}

fn audiences(aud: &Value) -> impl Iterator<Item = &str> {
    let list: Vec<&str> = match aud {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    list.into_iter()
}

/// Scopes from `scope` (space-separated) or `scp` (a list or a string).
fn scopes(claims: &Claims) -> Vec<&str> {
    let mut out = Vec::new();
    for claim in ["scope", "scp"] {
        match claims.get(claim) {
            Value::String(s) => out.extend(s.split_whitespace()),
            Value::Array(items) => out.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

/// Why the token is refused, if `store` holds one of its `claims` as
/// `<claim>:<value>`. A value too long to be a key is refused too: whether
/// it was revoked cannot be told.
fn revoked(store: &str, claims_to_check: &[String], claims: &Claims) -> Option<String> {
    for claim in claims_to_check {
        let Some(value) = claim_text(claims.get(claim)) else { continue };
        match kv::get(store, &format!("{claim}:{value}")) {
            Ok(None) => {}
            Ok(Some(_)) => return Some(format!("the token has been revoked (by its {claim})")),
            Err(KvError::InvalidKey(_)) => return Some(format!("its {claim} is too long to check for revocation")),
            // `check` refused this at load, as for the keyset.
            Err(e) => panic!("auth: revocation_store: {e}"),
        }
    }
    None
}

/// A claim as header text: strings as they are, lists joined by spaces.
fn claim_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => Some(items.iter().filter_map(claim_text).collect::<Vec<_>>().join(" ")),
        other => Some(other.to_string()),
    }
}

export_filter!(Auth);

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_filter::mock::jwt::{set_keyset, set_token};
    use cascade_filter::{check_config, instantiate};

    const CONFIG: &str = r#"{"keyset": "demo", "public_prefixes": ["/health"], "cookie": "session",
        "required_scopes": ["read"], "forward_claims": {"sub": "x-user-id", "plan": "x-user-plan"}}"#;

    fn auth() -> Auth {
        instantiate::<Auth>(CONFIG).unwrap()
    }

    fn reply(verdict: Verdict) -> Reply {
        match verdict {
            Verdict::Respond(reply) => reply,
            Verdict::Continue => panic!("expected a reply"),
        }
    }

    #[test]
    fn a_revoked_token_or_subject_is_refused() {
        use cascade_filter::mock::kv;
        let config = r#"{"keyset": "demo", "revocation_store": "revoked", "revoked_claims": ["jti", "sub"]}"#;
        set_keyset("demo");
        assert!(check_config::<Auth>(config).unwrap_err().contains("\"revoked\" is not configured in [kv_stores]"));
        kv::set_store("revoked", true);
        assert!(check_config::<Auth>(config).unwrap_err().contains("must be read-only to filters"));
        kv::set_store("revoked", false);
        check_config::<Auth>(config).unwrap();
        set_token("demo", "t1", Ok(r#"{"sub": "alice", "jti": "one"}"#));
        set_token("demo", "t2", Ok(r#"{"sub": "alice", "jti": "two"}"#));
        let long_jti = format!(r#"{{"sub": "bob", "jti": "{}"}}"#, "x".repeat(300));
        set_token("demo", "long", Ok(&long_jti));
        let filter = instantiate::<Auth>(config).unwrap();
        let with = |token: &str| Request::new("GET", "/api").with_header("authorization", &format!("Bearer {token}"));
        assert_eq!(filter.clone().on_request(&with("t1")), Verdict::Continue);
        kv::put("revoked", "jti:one", "");
        let refused = reply(filter.clone().on_request(&with("t1")));
        assert_eq!(refused.status, 401);
        assert!(refused.header_value("www-authenticate").unwrap().contains("revoked (by its jti)"), "{refused:?}");
        assert_eq!(filter.clone().on_request(&with("t2")), Verdict::Continue, "another token of the subject");
        kv::put("revoked", "sub:alice", "");
        assert_eq!(reply(filter.clone().on_request(&with("t2"))).status, 401);
        let long = reply(filter.clone().on_request(&with("long")));
        assert!(long.header_value("www-authenticate").unwrap().contains("too long to check"), "{long:?}");
        let none = r#"{"keyset": "demo", "revocation_store": "revoked", "revoked_claims": []}"#;
        assert!(instantiate::<Auth>(none).err().unwrap().contains("at least one claim"));
    }

    #[test]
    fn missing_token_gets_a_bare_challenge() {
        let r = reply(auth().on_request(&Request::new("GET", "/api")));
        assert_eq!(r.status, 401);
        assert_eq!(r.header_value("www-authenticate"), Some("Bearer realm=\"cascade\""));
    }

    #[test]
    fn valid_token_forwards_claims_and_strips_authorization() {
        set_token("demo", "good", Ok(r#"{"sub": "alice", "plan": "gold", "scope": "read write"}"#));
        let req =
            Request::new("GET", "/api").with_header("authorization", "Bearer good").with_header("x-user-id", "mallory");
        assert_eq!(auth().on_request(&req), Verdict::Continue);
        assert_eq!(req.header("x-user-id").as_deref(), Some("alice"));
        assert_eq!(req.header("x-user-plan").as_deref(), Some("gold"));
        assert_eq!(req.header("authorization"), None);
    }

    #[test]
    fn a_claim_the_token_lacks_removes_the_clients_header() {
        // Claims the filter does not read (nested or not) are skipped; an
        // escaped claim name still counts.
        let claims = r#"{"s\u0075b": "carol", "scope": "read", "ctx": {"a": [1, {"b": null}]}, "n": 1.5}"#;
        set_token("demo", "no-plan", Ok(claims));
        let req = Request::new("GET", "/api")
            .with_header("authorization", "Bearer no-plan")
            .with_header("x-user-plan", "gold");
        assert_eq!(auth().on_request(&req), Verdict::Continue);
        assert_eq!(req.header("x-user-id").as_deref(), Some("carol"));
        assert_eq!(req.header("x-user-plan"), None, "a spoofed plan must not reach the origin");
    }

    #[test]
    fn an_unknown_keyset_and_bad_names_are_refused_at_load() {
        set_keyset("demo");
        assert_eq!(check_config::<Auth>(CONFIG), Ok(()));
        let unknown = check_config::<Auth>(r#"{"keyset": "typo"}"#).unwrap_err();
        assert!(unknown.contains("keyset \"typo\" is not configured"), "{unknown}");
        for (bad, why) in [
            (r#"{"keyset": "demo", "forward_claims": {"sub": "x user"}}"#, "forward_claims"),
            (r#"{"keyset": "demo", "public_prefixes": [""]}"#, "must start with '/'"),
            // No path has it: the prefix would never be public.
            (r#"{"keyset": "demo", "public_prefixes": ["/a//b"]}"#, "an empty, '.' or '..' segment"),
            (r#"{"keyset": "demo", "realm": "a\"b"}"#, "realm"),
        ] {
            let error = instantiate::<Auth>(bad).err().unwrap();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn a_claim_that_cannot_be_forwarded_is_refused_not_trapped() {
        set_token("demo", "odd", Ok(r#"{"sub": "line\nbreak", "scope": "read"}"#));
        let req = Request::new("GET", "/api").with_header("authorization", "Bearer odd");
        let r = reply(auth().on_request(&req));
        assert_eq!(r.status, 401);
        assert!(r.header_value("www-authenticate").unwrap().contains("claim 'sub' cannot be forwarded"), "{r:?}");
    }

    #[test]
    fn public_paths_need_no_token_and_forward_none() {
        let req = Request::new("GET", "/health")
            .with_header("authorization", "Bearer anything")
            .with_header("x-user-id", "mallory");
        assert_eq!(auth().on_request(&req), Verdict::Continue);
        assert_eq!(req.header("authorization"), None);
        assert_eq!(req.header("x-user-id"), None);
    }

    #[test]
    fn the_token_cookie_name_is_checked_at_load() {
        let bad = r#"{"keyset": "demo", "cookie": "session id"}"#;
        assert!(instantiate::<Auth>(bad).err().unwrap().contains("HTTP token"));
    }

    #[test]
    fn token_from_cookie() {
        set_token("demo", "cookie-token", Ok(r#"{"sub": "bob", "scp": ["read"]}"#));
        let req = Request::new("GET", "/api").with_header("cookie", "a=1; session=cookie-token");
        assert_eq!(auth().on_request(&req), Verdict::Continue);
        assert_eq!(req.header("x-user-id").as_deref(), Some("bob"));
    }

    #[test]
    fn a_malformed_authorization_header_is_an_invalid_request() {
        set_token("demo", "good", Ok(r#"{"sub": "alice", "scope": "read"}"#));
        let cases = [
            (vec!["Bearer good", "Bearer good"], "more than one Authorization header"),
            (vec!["Bearer"], "hold no token"),
            (vec!["Bearer    "], "hold no token"),
            (vec!["Bearer go od"], "b64token"),
            (vec!["Bearer g\u{f6}od"], "b64token"),
            (vec!["Bearer =="], "b64token"),
        ];
        for (values, words) in cases {
            let req = values.iter().fold(Request::new("GET", "/api"), |req, v| req.with_header("authorization", v));
            let r = reply(auth().on_request(&req));
            assert_eq!(r.status, 400, "{values:?}");
            let challenge = r.header_value("www-authenticate").unwrap();
            assert!(challenge.contains("error=\"invalid_request\"") && challenge.contains(words), "{challenge}");
        }
        // Padding, and every b64token character, make a well-formed token;
        // another scheme is not a bearer token, and the cookie still counts.
        set_token("demo", "aZ09-._~+/==", Ok(r#"{"sub": "bob", "scope": "read"}"#));
        let req = Request::new("GET", "/api").with_header("authorization", "bearer  aZ09-._~+/==");
        assert_eq!(auth().on_request(&req), Verdict::Continue);
        let req = Request::new("GET", "/api")
            .with_header("authorization", "Basic YTpi")
            .with_header("cookie", "session=good");
        assert_eq!(auth().on_request(&req), Verdict::Continue);
        assert_eq!(req.header("x-user-id").as_deref(), Some("alice"));
    }

    #[test]
    fn invalid_token_and_missing_scope() {
        set_token("demo", "old", Err(VerifyError::Expired));
        let r = reply(auth().on_request(&Request::new("GET", "/").with_header("authorization", "Bearer old")));
        assert_eq!(r.status, 401);
        assert!(r.header_value("www-authenticate").unwrap().contains("error=\"invalid_token\""));

        set_token("demo", "weak", Ok(r#"{"sub": "eve", "scope": "write"}"#));
        let r = reply(auth().on_request(&Request::new("GET", "/").with_header("authorization", "Bearer weak")));
        assert_eq!(r.status, 403);
        let challenge = r.header_value("www-authenticate").unwrap();
        assert!(challenge.contains("error=\"insufficient_scope\"") && challenge.contains("scope=\"read\""));
    }

    #[test]
    fn an_error_description_is_printable_ascii_whatever_the_token_held() {
        let hostile = "bad JSON: unknown variant `\u{7}é\"\\\r\nx-injected: 1`".to_string() + &"a".repeat(500);
        set_token("demo", "hostile", Err(VerifyError::Malformed(hostile)));
        let r = reply(auth().on_request(&Request::new("GET", "/").with_header("authorization", "Bearer hostile")));
        assert_eq!(r.status, 401);
        let challenge = r.header_value("www-authenticate").unwrap();
        let description = challenge.split("error_description=\"").nth(1).unwrap().trim_end_matches('"');
        assert!(description.chars().all(|c| matches!(c, ' '..='~') && c != '"' && c != '\\'), "{challenge}");
        assert!(
            description.starts_with("malformed token: bad JSON: unknown variant `??''??x-injected: 1`"),
            "{description}"
        );
        assert_eq!(description.len(), 200);
        // The body is JSON, with the same description.
        let body: serde_json::Value = serde_json::from_slice(r.body.as_ref()).expect("the body is JSON");
        assert_eq!(body["error_description"], description);
    }

    #[test]
    fn public_prefix_needs_no_token_but_spoofed_identity_is_removed() {
        let req = Request::new("GET", "/health/live").with_header("x-user-id", "mallory");
        assert_eq!(auth().on_request(&req), Verdict::Continue);
        assert_eq!(req.header("x-user-id"), None);
    }
}
