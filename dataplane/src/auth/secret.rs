//! Credential secrets: stored only as salted argon2id hashes (PHC strings), verified in
//! constant time.
//!
//! Verifying an argon2 hash is deliberately expensive (tens of milliseconds and ~19 MiB), so
//! [`SecretVerifier`] bounds how many run at once and remembers recent successes for a short
//! while under a keyed digest (never the secret itself), which keeps clients that send Basic
//! authentication on every request fast.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand_core::{OsRng, RngCore};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

/// How long a successful verification is remembered.
const REMEMBER_FOR: Duration = Duration::from_secs(60);
/// Most remembered verifications; the memory is cleared when full.
const REMEMBER_AT_MOST: usize = 4096;
/// Most argon2 verifications running at once (each takes ~19 MiB and a core).
const CONCURRENT_VERIFICATIONS: usize = 2;

/// Why a secret could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the secret: {0}")]
pub struct HashError(String);

/// Hashes `secret` with argon2id and a fresh random salt, as a PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$...`).
pub fn hash_secret(secret: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// A new random secret: 32 bytes, URL-safe base64 (43 characters).
pub fn generate_secret() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `secret` matches the PHC `hash`. Unparsable hashes never match. The comparison
/// of the derived key is constant-time (done by the `password-hash` crate).
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash no secret matches, verified instead when a credential id is unknown so that unknown
/// ids and wrong secrets take the same time.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_secret(&generate_secret()).unwrap_or_default())
}

/// Verifies secrets against hashes with bounded concurrency and a short memory of successes.
#[derive(Debug)]
pub struct SecretVerifier {
    /// Random per process: remembered entries are digests keyed with it.
    key: [u8; 32],
    remembered: Mutex<HashMap<[u8; 32], Instant>>,
    permits: Semaphore,
}

impl Default for SecretVerifier {
    fn default() -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Self {
            key,
            remembered: Mutex::new(HashMap::new()),
            permits: Semaphore::new(CONCURRENT_VERIFICATIONS),
        }
    }
}

impl SecretVerifier {
    /// A verifier with an empty memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the index of the first hash in `hashes` that `secret` matches. With no hashes
    /// (unknown credential) a decoy is verified so that the answer takes as long as a
    /// wrong secret would.
    pub async fn matching(&self, secret: &str, hashes: &[&str]) -> Option<usize> {
        let now = Instant::now();
        let fingerprints: Vec<[u8; 32]> =
            hashes.iter().map(|h| self.fingerprint(secret, h)).collect();
        {
            let remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = fingerprints
                .iter()
                .position(|f| remembered.get(f).is_some_and(|until| *until > now))
            {
                return Some(i);
            }
        }
        let _permit = self.permits.acquire().await.ok()?;
        let secret_owned = secret.to_owned();
        let owned: Vec<String> = if hashes.is_empty() {
            vec![decoy_hash().to_owned()]
        } else {
            hashes.iter().map(|h| (*h).to_owned()).collect()
        };
        let found = tokio::task::spawn_blocking(move || {
            owned.iter().position(|h| verify_secret(&secret_owned, h))
        })
        .await
        .ok()
        .flatten()
        .filter(|_| !hashes.is_empty())?;
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if remembered.len() >= REMEMBER_AT_MOST {
            remembered.clear();
        }
        remembered.insert(fingerprints[found], Instant::now() + REMEMBER_FOR);
        Some(found)
    }

    fn fingerprint(&self, secret: &str, hash: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update((hash.len() as u64).to_be_bytes());
        h.update(hash.as_bytes());
        h.update(secret.as_bytes());
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_salted_phc_strings_that_verify() {
        let a = hash_secret("s3cret").unwrap();
        let b = hash_secret("s3cret").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "two hashes of one secret differ by their salt");
        assert!(verify_secret("s3cret", &a));
        assert!(verify_secret("s3cret", &b));
        assert!(!verify_secret("s3cret!", &a));
        assert!(!verify_secret("s3cret", "not a phc string"));
        assert!(!a.contains("s3cret"));
    }

    #[test]
    fn generated_secrets_are_long_and_distinct() {
        let a = generate_secret();
        assert_eq!(a.len(), 43);
        assert_ne!(a, generate_secret());
    }

    #[tokio::test]
    async fn verifier_finds_the_matching_hash_and_remembers_it() {
        let old = hash_secret("old").unwrap();
        let new = hash_secret("new").unwrap();
        let v = SecretVerifier::new();
        assert_eq!(v.matching("new", &[&old, &new]).await, Some(1));
        assert_eq!(v.matching("old", &[&old, &new]).await, Some(0));
        assert_eq!(v.matching("other", &[&old, &new]).await, None);
        assert_eq!(v.matching("new", &[]).await, None, "unknown credential");
        // Remembered: a hash the secret no longer matches in that position is not confused.
        assert_eq!(v.matching("new", &[&new]).await, Some(0));
        assert_eq!(v.matching("new", &[&old]).await, None);
        assert_eq!(v.remembered.lock().unwrap().len(), 2);
    }
}
