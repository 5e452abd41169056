//! JWT structure and claim checks, without any I/O.
//!
//! The token is split once; the signing input and signature handed to verification are the
//! very bytes whose claims are checked afterwards.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::OidcError;
use crate::config::ClaimRule;

/// Longest token accepted, in bytes. Real OIDC tokens are a few kilobytes.
pub(super) const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A JWT split into its parts, signature not yet verified.
#[derive(Debug)]
pub(crate) struct UnverifiedToken<'a> {
    /// `base64url(header) "." base64url(payload)`: what the signature covers.
    pub signing_input: &'a str,
    /// The base64url signature.
    pub signature: &'a str,
    /// The header's `alg`, already restricted to asymmetric algorithms.
    pub alg: Algorithm,
    /// The header's `kid`, if any.
    pub kid: Option<String>,
    /// The payload's `iss`.
    pub issuer: String,
    /// The payload's claims.
    pub claims: Map<String, Value>,
}

/// Splits `token` and decodes its header and payload. Refuses anything that is not a
/// compact JWS with an asymmetric algorithm (`none` and HMAC included).
pub(crate) fn parse(token: &str) -> Result<UnverifiedToken<'_>, OidcError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(OidcError::Malformed);
    }
    let (signing_input, signature) = token.rsplit_once('.').ok_or(OidcError::Malformed)?;
    let (header, payload) = signing_input.split_once('.').ok_or(OidcError::Malformed)?;
    if payload.contains('.') {
        return Err(OidcError::Malformed);
    }
    let header = decode_object(header)?;
    let claims = decode_object(payload)?;

    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(OidcError::Malformed)?;
    let alg = asymmetric_algorithm(alg).ok_or(OidcError::UnsupportedAlgorithm)?;
    if signature.is_empty() {
        return Err(OidcError::Malformed);
    }
    // Critical extensions must be understood by the recipient; this one understands none.
    if header.contains_key("crit") {
        return Err(OidcError::Malformed);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(OidcError::Malformed),
    };
    let issuer = match claims.get("iss") {
        Some(Value::String(iss)) => iss.clone(),
        Some(_) => return Err(OidcError::Malformed),
        None => return Err(OidcError::MissingClaim("iss")),
    };
    Ok(UnverifiedToken {
        signing_input,
        signature,
        alg,
        kid,
        issuer,
        claims,
    })
}

fn decode_object(part: &str) -> Result<Map<String, Value>, OidcError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| OidcError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(OidcError::Malformed),
    }
}

/// The algorithm named `alg` if it is an accepted asymmetric one.
pub(super) fn asymmetric_algorithm(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Checks `exp` (required), `nbf` and `iat` (when present) against `now`, allowing
/// `leeway` of clock skew either way.
pub(super) fn check_times(
    claims: &Map<String, Value>,
    now: SystemTime,
    leeway: Duration,
) -> Result<(), OidcError> {
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let leeway = leeway.as_secs_f64();
    let numeric = |name: &'static str| -> Result<Option<f64>, OidcError> {
        match claims.get(name) {
            None => Ok(None),
            Some(value) => value.as_f64().map(Some).ok_or(OidcError::Malformed),
        }
    };
    let exp = numeric("exp")?.ok_or(OidcError::MissingClaim("exp"))?;
    if now >= exp + leeway {
        return Err(OidcError::Expired);
    }
    if let Some(nbf) = numeric("nbf")?
        && now + leeway < nbf
    {
        return Err(OidcError::NotYetValid);
    }
    if let Some(iat) = numeric("iat")?
        && now + leeway < iat
    {
        return Err(OidcError::NotYetValid);
    }
    Ok(())
}

/// The token's `exp`, when it is a number of seconds since the epoch.
pub(super) fn expiry(claims: &Map<String, Value>) -> Option<SystemTime> {
    let exp = claims.get("exp")?.as_f64()?;
    (exp.is_finite() && exp > 0.0)
        .then(|| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(exp.min(u32::MAX as f64)))
}

/// The token's `sub`.
pub(super) fn subject(claims: &Map<String, Value>) -> Result<String, OidcError> {
    match claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => Ok(sub.clone()),
        Some(_) => Err(OidcError::Malformed),
        None => Err(OidcError::MissingClaim("sub")),
    }
}

/// Whether the token's `aud` (a string or an array of strings) contains `audience`.
pub(super) fn audience_contains(claims: &Map<String, Value>, audience: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    }
}

/// Whether every rule matches (an empty rule list matches).
pub(super) fn rules_match(claims: &Map<String, Value>, rules: &[ClaimRule]) -> bool {
    rules.iter().all(|rule| rule_matches(claims, rule))
}

/// Whether the top-level claim `rule.claim` holds one of `rule.values`. Strings compare
/// as they are, numbers and booleans by their JSON text; an array matches when any of its
/// elements does. A value ending in `*` matches by prefix.
fn rule_matches(claims: &Map<String, Value>, rule: &ClaimRule) -> bool {
    let Some(claim) = claims.get(&rule.claim) else {
        return false;
    };
    let accepts = |text: &str| rule.values.iter().any(|value| pattern_matches(value, text));
    match claim {
        Value::Array(items) => items
            .iter()
            .filter_map(scalar_text)
            .any(|text| accepts(&text)),
        other => scalar_text(other).is_some_and(|text| accepts(&text)),
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

fn pattern_matches(pattern: &str, text: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => text.starts_with(prefix),
        None => pattern == text,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("test claims are objects"),
        }
    }

    fn rule(claim: &str, values: &[&str]) -> ClaimRule {
        ClaimRule {
            claim: claim.to_owned(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    fn encode(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("json"))
    }

    #[test]
    fn parse_reads_alg_kid_and_issuer() {
        let token = format!(
            "{}.{}.c2ln",
            encode(&json!({"alg": "ES256", "kid": "k1"})),
            encode(&json!({"iss": "https://issuer", "sub": "s"}))
        );
        let parsed = parse(&token).expect("parses");
        assert_eq!(parsed.alg, Algorithm::ES256);
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.issuer, "https://issuer");
        assert_eq!(parsed.signature, "c2ln");
        assert!(token.starts_with(parsed.signing_input));
    }

    #[test]
    fn parse_refuses_none_hmac_and_garbage() {
        let payload = encode(&json!({"iss": "https://issuer"}));
        for alg in ["none", "HS256", "HS512", "RSA-OAEP", ""] {
            let token = format!("{}.{payload}.c2ln", encode(&json!({ "alg": alg })));
            assert!(
                matches!(parse(&token), Err(OidcError::UnsupportedAlgorithm)),
                "{alg}"
            );
        }
        let unsigned = format!("{}.{payload}.", encode(&json!({"alg": "RS256"})));
        assert!(matches!(parse(&unsigned), Err(OidcError::Malformed)));
        for garbage in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"x".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(matches!(parse(garbage), Err(OidcError::Malformed)));
        }
        let crit = format!(
            "{}.{payload}.c2ln",
            encode(&json!({"alg": "RS256", "crit": ["b64"], "b64": false}))
        );
        assert!(matches!(parse(&crit), Err(OidcError::Malformed)));
        let no_iss = format!(
            "{}.{}.c2ln",
            encode(&json!({"alg": "RS256"})),
            encode(&json!({}))
        );
        assert!(matches!(
            parse(&no_iss),
            Err(OidcError::MissingClaim("iss"))
        ));
    }

    #[test]
    fn times_honour_leeway() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let leeway = Duration::from_secs(30);
        let check = |c: Value| check_times(&claims(c), now, leeway);
        assert!(check(json!({"exp": 1_000_100})).is_ok());
        assert!(check(json!({"exp": 999_990})).is_ok(), "within leeway");
        assert!(matches!(
            check(json!({"exp": 999_900})),
            Err(OidcError::Expired)
        ));
        assert!(matches!(
            check(json!({})),
            Err(OidcError::MissingClaim("exp"))
        ));
        assert!(matches!(
            check(json!({"exp": "soon"})),
            Err(OidcError::Malformed)
        ));
        assert!(check(json!({"exp": 1_000_100, "nbf": 1_000_010})).is_ok());
        assert!(matches!(
            check(json!({"exp": 1_000_100, "nbf": 1_000_060})),
            Err(OidcError::NotYetValid)
        ));
        assert!(matches!(
            check(json!({"exp": 1_000_900, "iat": 1_000_600})),
            Err(OidcError::NotYetValid)
        ));
        assert!(check(json!({"exp": 1_000_100.5, "iat": 999_000})).is_ok());
    }

    #[test]
    fn audience_is_a_string_or_an_array() {
        assert!(audience_contains(
            &claims(json!({"aud": "registry"})),
            "registry"
        ));
        assert!(audience_contains(
            &claims(json!({"aud": ["a", "registry"]})),
            "registry"
        ));
        assert!(!audience_contains(
            &claims(json!({"aud": ["a", "b"]})),
            "registry"
        ));
        assert!(!audience_contains(
            &claims(json!({"aud": "registry2"})),
            "registry"
        ));
        assert!(!audience_contains(&claims(json!({})), "registry"));
    }

    #[test]
    fn claim_rules_match_strings_numbers_arrays_and_prefixes() {
        let c = claims(json!({
            "sub": "system:serviceaccount:ci:builder",
            "project_path": "acme/tools/app",
            "project_id": 42,
            "protected": true,
            "groups": ["dev", "ops"],
            "nested": {"a": "b"},
        }));
        assert!(rules_match(&c, &[]));
        assert!(rules_match(
            &c,
            &[rule("sub", &["system:serviceaccount:ci:builder"])]
        ));
        assert!(!rules_match(
            &c,
            &[rule("sub", &["system:serviceaccount:ci:other"])]
        ));
        assert!(rules_match(
            &c,
            &[rule("project_path", &["other/*", "acme/*"])]
        ));
        assert!(!rules_match(&c, &[rule("project_path", &["acme"])]));
        assert!(!rules_match(&c, &[rule("project_path", &["acme/tools"])]));
        assert!(rules_match(&c, &[rule("project_id", &["42"])]));
        assert!(rules_match(&c, &[rule("protected", &["true"])]));
        assert!(rules_match(&c, &[rule("groups", &["ops"])]));
        assert!(!rules_match(&c, &[rule("groups", &["admin"])]));
        assert!(!rules_match(&c, &[rule("nested", &["*"])]));
        assert!(!rules_match(&c, &[rule("missing", &["*"])]));
        assert!(!rules_match(&c, &[rule("sub", &[])]));
        assert!(
            !rules_match(
                &c,
                &[
                    rule("project_path", &["acme/*"]),
                    rule("protected", &["false"])
                ]
            ),
            "every rule must match"
        );
    }
}
