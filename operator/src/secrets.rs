//! Credential secrets: generated here, delivered to the credential's Secret, and stored for
//! the data plane only as argon2id hashes.
//!
//! The operator keeps one state Secret per credential in its own namespace (users cannot
//! write there): the current secret's argon2id hash and SHA-256 fingerprint, when it was
//! issued, and the hashes of rotated-out secrets with the time they stop working. The secret
//! itself is never stored there (the data plane may read that namespace): only the
//! credential's own Secret, in the tenant's namespace, holds it, and the operator takes it
//! from there when it writes copies, checking it against the fingerprint. A secret lost from
//! there (deleted or edited by hand) cannot be recovered, so a new one is issued, with the
//! usual overlap for the old one.

use std::collections::BTreeMap;

use argon2::password_hash::{PasswordHasher as _, SaltString};
use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::{Error, Result};

/// How long a rotated-out secret keeps working when the credential does not say
/// (`spec.rotationOverlap`).
pub const DEFAULT_ROTATION_OVERLAP: std::time::Duration = std::time::Duration::from_secs(3600);

/// A new random secret: 32 bytes, URL-safe base64 (43 characters).
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The argon2id PHC hash of a secret, with a random salt (the data plane's `secretHash`).
pub fn hash_secret(secret: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Crypto(e.to_string()))
}

/// A rotated-out secret's hash and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviousHash {
    /// The argon2id hash.
    pub secret_hash: String,
    /// When it stops working.
    pub expires_at: Timestamp,
}

/// What the operator keeps about a credential's secret.
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialState {
    /// The current secret, when known: just issued, or taken from the credential's Secret
    /// ([`CredentialState::knows`]). Empty when read from a state Secret.
    pub secret: String,
    /// SHA-256 of the secret (hex), to recognise it in the credential's Secret. The secret has
    /// 256 random bits, so this reveals nothing usable.
    pub fingerprint: String,
    /// Its argon2id hash (the only form the data plane sees).
    pub secret_hash: String,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// The rotation annotation value it was issued for, if any.
    pub rotation_request: Option<String>,
    /// Rotated-out secrets still accepted.
    pub previous: Vec<PreviousHash>,
}

impl std::fmt::Debug for CredentialState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialState")
            .field("secret", &"<redacted>")
            .field("issued_at", &self.issued_at)
            .field("previous", &self.previous.len())
            .finish()
    }
}

/// The key that held the secret itself in state Secrets of earlier versions (read once, then
/// dropped from the Secret).
pub const LEGACY_SECRET: &str = "secret";
const FINGERPRINT: &str = "secretFingerprint";
const HASH: &str = "secretHash";
const ISSUED_AT: &str = "issuedAt";
const ROTATION_REQUEST: &str = "rotationRequest";
const PREVIOUS: &str = "previous";

impl CredentialState {
    /// A new secret, issued at `now`.
    pub fn issue(now: Timestamp, rotation_request: Option<String>) -> Result<Self> {
        let secret = generate_secret();
        Ok(Self {
            secret_hash: hash_secret(&secret)?,
            fingerprint: fingerprint(&secret),
            secret,
            issued_at: now,
            rotation_request,
            previous: Vec::new(),
        })
    }

    /// The next state after a rotation at `now`: a new secret, the current one accepted for
    /// `overlap`, expired previous ones dropped.
    pub fn rotate(
        &self,
        now: Timestamp,
        rotation_request: Option<String>,
        overlap: std::time::Duration,
    ) -> Result<Self> {
        let mut next = Self::issue(now, rotation_request)?;
        let overlap = SignedDuration::try_from(overlap).unwrap_or(SignedDuration::MAX);
        next.previous = self
            .previous
            .iter()
            .filter(|p| p.expires_at > now)
            .cloned()
            .chain(std::iter::once(PreviousHash {
                secret_hash: self.secret_hash.clone(),
                expires_at: now + overlap,
            }))
            .collect();
        Ok(next)
    }

    /// Whether a rotation is due at `now` for this period and annotation value.
    pub fn rotation_due(
        &self,
        now: Timestamp,
        period: Option<std::time::Duration>,
        rotation_request: Option<&str>,
    ) -> bool {
        let requested =
            rotation_request.is_some() && rotation_request != self.rotation_request.as_deref();
        let aged = period.is_some_and(|p| {
            now.duration_since(self.issued_at)
                >= SignedDuration::try_from(p).unwrap_or(SignedDuration::MAX)
        });
        requested || aged
    }

    /// The data of the state Secret.
    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            data.insert(k.to_owned(), ByteString(v.into_bytes()));
        };
        put(FINGERPRINT, self.fingerprint.clone());
        put(HASH, self.secret_hash.clone());
        put(ISSUED_AT, self.issued_at.to_string());
        if let Some(r) = &self.rotation_request {
            put(ROTATION_REQUEST, r.clone());
        }
        put(
            PREVIOUS,
            serde_json::to_string(&self.previous).expect("hashes serialize"),
        );
        data
    }

    /// Reads the data of a state Secret named `name`.
    pub fn from_data(name: &str, data: &BTreeMap<String, ByteString>) -> Result<Self> {
        let corrupt = |message: String| Error::CorruptState {
            name: name.to_owned(),
            message,
        };
        let text = |k: &str| -> Result<String> {
            let bytes = data
                .get(k)
                .ok_or_else(|| corrupt(format!("missing key {k:?}")))?;
            String::from_utf8(bytes.0.clone()).map_err(|_| corrupt(format!("{k:?} is not UTF-8")))
        };
        let previous = match data.get(PREVIOUS) {
            None => Vec::new(),
            Some(bytes) => serde_json::from_slice(&bytes.0)
                .map_err(|e| corrupt(format!("{PREVIOUS:?}: {e}")))?,
        };
        // Earlier versions kept the secret itself: its fingerprint is computed from it.
        let legacy = data
            .contains_key(LEGACY_SECRET)
            .then(|| text(LEGACY_SECRET))
            .transpose()?;
        let fingerprint = match &legacy {
            Some(secret) => self::fingerprint(secret),
            None => text(FINGERPRINT)?,
        };
        Ok(Self {
            secret: legacy.unwrap_or_default(),
            fingerprint,
            secret_hash: text(HASH)?,
            issued_at: text(ISSUED_AT)?
                .parse()
                .map_err(|e| corrupt(format!("{ISSUED_AT:?}: {e}")))?,
            rotation_request: data
                .contains_key(ROTATION_REQUEST)
                .then(|| text(ROTATION_REQUEST))
                .transpose()?,
            previous,
        })
    }
}

impl CredentialState {
    /// Whether `candidate` is the current secret (by its fingerprint, in constant time).
    pub fn knows(&self, candidate: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        let theirs = fingerprint(candidate);
        self.fingerprint.as_bytes().ct_eq(theirs.as_bytes()).into()
    }
}

/// The SHA-256 of a secret, hex.
pub fn fingerprint(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// The `.dockerconfigjson` of a credential for one registry host (rendered with serde).
pub fn docker_config_json(host: &str, username: &str, secret: &str) -> String {
    #[derive(Serialize)]
    struct Auth<'a> {
        username: &'a str,
        password: &'a str,
        auth: String,
    }
    #[derive(Serialize)]
    struct DockerConfig<'a> {
        auths: BTreeMap<&'a str, Auth<'a>>,
    }
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"));
    let config = DockerConfig {
        auths: BTreeMap::from([(
            host,
            Auth {
                username,
                password: secret,
                auth,
            },
        )]),
    };
    serde_json::to_string(&config).expect("docker config serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn issued_secrets_are_random_and_hashed() {
        let a = CredentialState::issue(at(0), None).unwrap();
        let b = CredentialState::issue(at(0), None).unwrap();
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.secret.len(), 43);
        assert!(a.secret_hash.starts_with("$argon2id$"));
        assert!(!a.secret_hash.contains(&a.secret));
        assert!(!format!("{a:?}").contains(&a.secret));
    }

    #[test]
    fn rotation_keeps_the_old_hash_for_the_overlap() {
        let first = CredentialState::issue(at(0), None).unwrap();
        assert!(!first.rotation_due(at(10), None, None));
        assert!(first.rotation_due(at(7200), Some(std::time::Duration::from_secs(3600)), None));
        assert!(first.rotation_due(at(10), None, Some("now")));
        let hour = std::time::Duration::from_secs(3600);
        let second = first.rotate(at(100), Some("now".into()), hour).unwrap();
        assert!(
            !second.rotation_due(at(110), None, Some("now")),
            "same request only once"
        );
        assert_ne!(second.secret, first.secret);
        assert_eq!(second.previous.len(), 1);
        assert_eq!(second.previous[0].secret_hash, first.secret_hash);
        assert_eq!(second.previous[0].expires_at, at(100 + 3600));
        // An expired previous hash is dropped on the next rotation.
        let third = second.rotate(at(100 + 3600 + 1), None, hour).unwrap();
        assert_eq!(third.previous.len(), 1);
        assert_eq!(third.previous[0].secret_hash, second.secret_hash);
    }

    #[test]
    fn state_round_trips_through_secret_data() {
        let state = CredentialState::issue(at(5), Some("r1".into()))
            .unwrap()
            .rotate(at(9), None, DEFAULT_ROTATION_OVERLAP)
            .unwrap();
        let data = state.to_data();
        assert!(
            data.values()
                .all(|v| !String::from_utf8_lossy(&v.0).contains(&state.secret)),
            "the secret itself is never stored"
        );
        let back = CredentialState::from_data("s", &data).unwrap();
        assert_eq!(back.secret, "", "read back without the secret");
        assert!(back.knows(&state.secret));
        assert!(!back.knows("something else"));
        assert_eq!(
            CredentialState {
                secret: state.secret.clone(),
                ..back
            },
            state
        );
        // A state Secret of an earlier version, with the secret itself: read with it.
        let mut legacy = data.clone();
        legacy.remove("secretFingerprint");
        legacy.insert(
            LEGACY_SECRET.to_owned(),
            ByteString(state.secret.clone().into_bytes()),
        );
        let back = CredentialState::from_data("s", &legacy).unwrap();
        assert_eq!(back, state);
        let mut broken = state.to_data();
        broken.remove("secretHash");
        let err = CredentialState::from_data("s", &broken).unwrap_err();
        assert!(err.to_string().contains("secretHash"), "{err}");
    }

    #[test]
    fn docker_config_carries_the_host_and_basic_auth() {
        let json = docker_config_json("registry.example.com:5000", "ns.cred", "s3cr3t");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let entry = &v["auths"]["registry.example.com:5000"];
        assert_eq!(entry["username"], "ns.cred");
        assert_eq!(entry["password"], "s3cr3t");
        assert_eq!(entry["auth"], "bnMuY3JlZDpzM2NyM3Q=");
    }
}
