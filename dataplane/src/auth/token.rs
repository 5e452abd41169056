//! The registry's own tokens: short-lived signed JWTs in the Docker token format.
//!
//! An access token lists, per repository, the actions granted (`access`), as the Docker token
//! specification describes; every request verifies it with a public key held in memory, with
//! no storage read. A refresh token (`use: refresh`) names only the credential it was issued
//! to and is exchanged for new access tokens after re-checking that credential.
//!
//! Keys come from the configuration (`tokens.keys`, `tokens.active`): the active key signs,
//! every listed key verifies, so a rotation keeps old tokens valid until they expire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{SigningAlgorithm, SigningKey, TokensConfig};

/// Clock skew tolerated when checking `exp` and `nbf`.
const LEEWAY: Duration = Duration::from_secs(30);

/// Why a token or key was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is malformed, has a bad signature, is expired, not yet valid, or for
    /// another service.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token was signed by a key this service does not hold.
    #[error("invalid token: signed by an unknown key")]
    UnknownKey,
    /// A configured key could not be loaded.
    #[error("token key {id:?}: {message}")]
    Key {
        /// The key id.
        id: String,
        /// What is wrong with it.
        message: String,
    },
}

/// What a token is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenUse {
    /// Presented as `Authorization: Bearer` on registry requests.
    #[default]
    Access,
    /// Exchanged at the token endpoint for new access tokens.
    Refresh,
}

/// One entry of a token's `access` list: the actions granted on one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceAccess {
    /// `repository` or `registry`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The repository name, or `catalog`.
    pub name: String,
    /// Granted actions: `pull`, `push`, `delete`, or `*`.
    pub actions: Vec<String>,
}

/// The claims of the registry's tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: the token service's name.
    pub iss: String,
    /// Subject: the credential id, `federation:<name>:<subject>`, or empty for anonymous.
    pub sub: String,
    /// Audience: the registry service name.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not before, seconds since the epoch.
    pub nbf: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Unique token id.
    pub jti: String,
    /// Access token or refresh token.
    #[serde(default, rename = "use")]
    pub token_use: TokenUse,
    /// Granted actions per resource.
    #[serde(default)]
    pub access: Vec<ResourceAccess>,
    /// Namespaces whose repositories the catalog shows to the bearer (set when the catalog
    /// was granted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub catalog: Vec<String>,
    /// Refresh tokens of a workload identity: the federations it was proved against (its
    /// grants are theirs, as configured when the token is redeemed, pull only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub federations: Vec<String>,
}

impl Claims {
    /// Claims valid from `now` for `ttl`.
    pub fn new(service: &str, subject: &str, now: SystemTime, ttl: Duration) -> Self {
        let now = unix_seconds(now);
        Self {
            iss: service.to_owned(),
            sub: subject.to_owned(),
            aud: service.to_owned(),
            exp: now + ttl.as_secs(),
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            token_use: TokenUse::Access,
            access: Vec::new(),
            catalog: Vec::new(),
            federations: Vec::new(),
        }
    }

    /// Whether the token grants `action` on the repository `name` (`*` grants everything).
    pub fn grants(&self, kind: &str, name: &str, action: &str) -> bool {
        self.access.iter().any(|a| {
            a.kind == kind && a.name == name && a.actions.iter().any(|x| x == action || x == "*")
        })
    }
}

/// Seconds since the epoch.
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One loaded key: signs with the private half, verifies with the public half.
struct LoadedKey {
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The keys of the token service: one signs, all verify.
#[derive(Debug, Clone)]
pub struct KeySet {
    active: String,
    keys: Arc<HashMap<String, LoadedKey>>,
}

impl KeySet {
    /// Loads the configured keys, all or nothing: every key must load, and each must sign a
    /// probe token that its own public half verifies, so a key set that loads can sign and
    /// verify for real. Every key that fails is reported. With no key configured, `fallback`
    /// signs (and verifies) instead.
    pub fn load(config: &TokensConfig, fallback: &SigningKey) -> Result<Self, Vec<TokenError>> {
        let mut errors = Vec::new();
        let mut keys = HashMap::new();
        for key in &config.keys {
            match load_key(key).and_then(|loaded| probe(&key.id, &loaded).map(|()| loaded)) {
                Ok(loaded) => {
                    keys.insert(key.id.clone(), loaded);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let active = match &config.active {
            Some(id) if keys.contains_key(id) => id.clone(),
            Some(id) => {
                return Err(vec![TokenError::Key {
                    id: id.clone(),
                    message: "tokens.active names a key that is not in tokens.keys".into(),
                }]);
            }
            None if !keys.is_empty() => {
                return Err(vec![TokenError::Key {
                    id: String::new(),
                    message: "tokens.active must name the key that signs new tokens".into(),
                }]);
            }
            None => {
                let loaded = load_key(fallback).map_err(|e| vec![e])?;
                keys.insert(fallback.id.clone(), loaded);
                fallback.id.clone()
            }
        };
        Ok(Self {
            active,
            keys: Arc::new(keys),
        })
    }

    /// Id of the signing key.
    pub fn active_id(&self) -> &str {
        &self.active
    }

    /// Signs `claims` with the active key.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let key = self.keys.get(&self.active).ok_or(TokenError::UnknownKey)?;
        let mut header = Header::new(key.algorithm);
        header.kid = Some(self.active.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Verifies the signature, `exp`, `nbf`, issuer and audience (both `service`) of `token`.
    pub fn verify(&self, token: &str, service: &str) -> Result<Claims, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(TokenError::UnknownKey)?;
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.set_audience(&[service]);
        validation.set_issuer(&[service]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }
}

fn load_key(key: &SigningKey) -> Result<LoadedKey, TokenError> {
    let fail = |message: String| TokenError::Key {
        id: key.id.clone(),
        message,
    };
    let pem = key.private_key.as_bytes();
    let (algorithm, encoding, public_pem) = match key.algorithm {
        SigningAlgorithm::ES256 => {
            use p256::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
            let secret = p256::SecretKey::from_pkcs8_pem(&key.private_key)
                .or_else(|_| p256::SecretKey::from_sec1_pem(&key.private_key))
                .map_err(|e| fail(format!("not a P-256 private key in PEM: {e}")))?;
            let public = secret
                .public_key()
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| fail(e.to_string()))?;
            let encoding = EncodingKey::from_ec_pem(pem).map_err(|e| fail(e.to_string()))?;
            (Algorithm::ES256, encoding, public)
        }
        SigningAlgorithm::EdDSA => {
            use ed25519_dalek::pkcs8::{
                DecodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding,
            };
            let secret = ed25519_dalek::SigningKey::from_pkcs8_pem(&key.private_key)
                .map_err(|e| fail(format!("not an Ed25519 PKCS#8 private key in PEM: {e}")))?;
            let public = secret
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| fail(e.to_string()))?;
            let encoding = EncodingKey::from_ed_pem(pem).map_err(|e| fail(e.to_string()))?;
            (Algorithm::EdDSA, encoding, public)
        }
        SigningAlgorithm::RS256 => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
            let secret = rsa::RsaPrivateKey::from_pkcs8_pem(&key.private_key)
                .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(&key.private_key))
                .map_err(|e| fail(format!("not an RSA private key in PEM: {e}")))?;
            let public = secret
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| fail(e.to_string()))?;
            let encoding = EncodingKey::from_rsa_pem(pem).map_err(|e| fail(e.to_string()))?;
            (Algorithm::RS256, encoding, public)
        }
    };
    let decoding = match algorithm {
        Algorithm::ES256 => DecodingKey::from_ec_pem(public_pem.as_bytes()),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(public_pem.as_bytes()),
        _ => DecodingKey::from_rsa_pem(public_pem.as_bytes()),
    }
    .map_err(|e| fail(e.to_string()))?;
    Ok(LoadedKey {
        algorithm,
        encoding,
        decoding,
    })
}

/// Signs a short probe token with `key` and verifies it with the key's public half.
fn probe(id: &str, key: &LoadedKey) -> Result<(), TokenError> {
    let fail = |message: String| TokenError::Key {
        id: id.to_owned(),
        message,
    };
    let claims = Claims::new("probe", "probe", SystemTime::now(), Duration::from_secs(60));
    let token = jsonwebtoken::encode(&Header::new(key.algorithm), &claims, &key.encoding)
        .map_err(|e| fail(format!("does not sign: {e}")))?;
    let mut validation = Validation::new(key.algorithm);
    validation.set_audience(&["probe"]);
    jsonwebtoken::decode::<Claims>(&token, &key.decoding, &validation)
        .map(drop)
        .map_err(|e| fail(format!("its signatures do not verify: {e}")))
}

/// A new ES256 signing key with this id (PKCS#8 PEM).
pub fn generate_key(id: &str) -> SigningKey {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let secret = p256::SecretKey::random(&mut rand_core::OsRng);
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map(|pem| pem.to_string())
        .unwrap_or_default();
    SigningKey {
        id: id.to_owned(),
        algorithm: SigningAlgorithm::ES256,
        private_key: pem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(active: &str, keys: Vec<SigningKey>) -> TokensConfig {
        TokensConfig {
            active: Some(active.to_owned()),
            keys,
            ..TokensConfig::default()
        }
    }

    fn claims(ttl: Duration) -> Claims {
        let mut c = Claims::new("reg", "ci", SystemTime::now(), ttl);
        c.access.push(ResourceAccess {
            kind: "repository".into(),
            name: "acme/app".into(),
            actions: vec!["pull".into()],
        });
        c
    }

    fn ed25519_key(id: &str) -> SigningKey {
        use ed25519_dalek::pkcs8::{EncodePrivateKey, spki::der::pem::LineEnding};
        let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        SigningKey {
            id: id.into(),
            algorithm: SigningAlgorithm::EdDSA,
            private_key: key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
        }
    }

    #[test]
    fn signed_tokens_verify_and_carry_their_grants() {
        let fallback = generate_key("fallback");
        for key in [generate_key("k1"), ed25519_key("k1")] {
            let keys = KeySet::load(&config("k1", vec![key]), &fallback).expect("the key loads");
            assert_eq!(keys.active_id(), "k1");
            let token = keys.sign(&claims(Duration::from_secs(60))).unwrap();
            let verified = keys.verify(&token, "reg").unwrap();
            assert!(verified.grants("repository", "acme/app", "pull"));
            assert!(!verified.grants("repository", "acme/app", "push"));
            assert!(!verified.grants("repository", "acme/other", "pull"));
        }
    }

    #[test]
    fn tampered_expired_foreign_and_wrong_audience_tokens_fail() {
        let fallback = generate_key("fallback");
        let keys = KeySet::load(&config("k1", vec![generate_key("k1")]), &fallback).unwrap();
        let token = keys.sign(&claims(Duration::from_secs(60))).unwrap();

        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let forged = claims(Duration::from_secs(60));
        let mut forged = forged;
        forged.access[0].actions.push("push".into());
        use base64::Engine as _;
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&forged).unwrap());
        assert!(
            keys.verify(&parts.join("."), "reg").is_err(),
            "tampered payload"
        );

        assert!(keys.verify(&token, "other-service").is_err(), "audience");

        let mut old = claims(Duration::from_secs(60));
        old.exp = unix_seconds(SystemTime::now()) - 120;
        let expired = keys.sign(&old).unwrap();
        assert!(keys.verify(&expired, "reg").is_err(), "expired");

        let mut future = claims(Duration::from_secs(600));
        future.nbf = unix_seconds(SystemTime::now()) + 300;
        assert!(
            keys.verify(&keys.sign(&future).unwrap(), "reg").is_err(),
            "not yet valid"
        );

        let stranger = KeySet::load(&config("k1", vec![generate_key("k1")]), &fallback).unwrap();
        let foreign = stranger.sign(&claims(Duration::from_secs(60))).unwrap();
        assert!(keys.verify(&foreign, "reg").is_err(), "same kid, other key");
        assert!(keys.verify("not.a.jwt", "reg").is_err());
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_and_signs_with_the_new_key() {
        let fallback = generate_key("fallback");
        let old = generate_key("old");
        let new = generate_key("new");
        let before = KeySet::load(&config("old", vec![old.clone()]), &fallback).unwrap();
        let old_token = before.sign(&claims(Duration::from_secs(60))).unwrap();
        let after = KeySet::load(&config("new", vec![old, new]), &fallback).unwrap();
        assert!(after.verify(&old_token, "reg").is_ok());
        let new_token = after.sign(&claims(Duration::from_secs(60))).unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&new_token)
                .unwrap()
                .kid
                .as_deref(),
            Some("new")
        );
        assert!(before.verify(&new_token, "reg").is_err());
    }

    #[test]
    fn broken_keys_are_refused_and_every_one_is_reported() {
        let fallback = generate_key("fallback");
        let broken = |id: &str| SigningKey {
            id: id.into(),
            algorithm: SigningAlgorithm::ES256,
            private_key: "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n".into(),
        };
        let errors = KeySet::load(&config("k1", vec![broken("k1")]), &fallback).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("k1"), "{}", errors[0]);
        // A broken key that only verifies is refused too: nothing is left out silently.
        let errors = KeySet::load(
            &config("k1", vec![generate_key("k1"), broken("k0"), broken("k2")]),
            &fallback,
        )
        .unwrap_err();
        let ids: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{ids:?}");
        // An Ed25519 key declared as ES256 does not load either.
        let mut mislabelled = ed25519_key("k1");
        mislabelled.algorithm = SigningAlgorithm::ES256;
        assert!(KeySet::load(&config("k1", vec![mislabelled]), &fallback).is_err());
    }

    #[test]
    fn without_keys_the_fallback_signs() {
        let fallback = generate_key("fallback");
        let keys = KeySet::load(&TokensConfig::default(), &fallback).unwrap();
        assert_eq!(keys.active_id(), "fallback");
        let token = keys.sign(&claims(Duration::from_secs(60))).unwrap();
        assert!(keys.verify(&token, "reg").is_ok());
    }
}
