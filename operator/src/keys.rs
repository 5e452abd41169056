//! Token-signing keys: made by the operator, kept in a Secret of its namespace, rotated with
//! overlap.
//!
//! A new key is first published for verification only; it signs once every replica has had
//! time to load it ([`ACTIVATION_DELAY`]). The key it replaces keeps verifying until every
//! token it signed has expired (the token lifetime plus a margin), then it is dropped.

use std::time::Duration;

use crds::config::{HumanDuration, SigningAlgorithm, SigningKey, TokensConfig};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Time between publishing a key and signing with it.
pub const ACTIVATION_DELAY: Duration = Duration::from_secs(60);
/// Added to the token lifetime before a replaced key is dropped.
pub const RETIRE_MARGIN: Duration = Duration::from_secs(60);
/// The data key of the keys Secret.
pub const KEYS_DATA_KEY: &str = "keys.yaml";

/// One key as kept in the keys Secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredKey {
    /// Key id (`kid`).
    pub id: String,
    /// PKCS#8 PEM of the ES256 private key.
    pub private_key: String,
    /// When it was made.
    pub created_at: Timestamp,
}

/// The keys a region signs and verifies tokens with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRing {
    /// Oldest first.
    pub keys: Vec<StoredKey>,
}

fn to_signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

impl KeyRing {
    /// Parses the keys Secret's content.
    pub fn from_yaml(text: &str) -> Result<Self> {
        serde_norway::from_str(text).map_err(|e| Error::CorruptState {
            name: KEYS_DATA_KEY.into(),
            message: e.to_string(),
        })
    }

    /// The content of the keys Secret.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("keys serialize")
    }

    /// Brings the ring up to date at `now`: a first key when there is none, a new key when
    /// the newest is older than `rotation`, and replaced keys dropped once their tokens have
    /// expired. Returns whether anything changed.
    pub fn rotate(&mut self, now: Timestamp, rotation: Duration, ttl: Duration) -> Result<bool> {
        let mut changed = false;
        let newest_age = self.keys.last().map(|k| now.duration_since(k.created_at));
        if newest_age.is_none_or(|age| age >= to_signed(rotation)) {
            self.keys.push(StoredKey {
                id: key_id(now),
                private_key: generate_pem()?,
                created_at: now,
            });
            changed = true;
        }
        // The active key signs; every older key can go once the key after it has been active
        // (so the older one has signed nothing) for longer than a token lives.
        let active = self.active_index(now);
        let keep_from = (0..active)
            .rev()
            .find(|&i| {
                let successor_active_since =
                    self.keys[i + 1].created_at + to_signed(ACTIVATION_DELAY);
                now.duration_since(successor_active_since) < to_signed(ttl + RETIRE_MARGIN)
            })
            .unwrap_or(active);
        if keep_from > 0 {
            self.keys.drain(..keep_from);
            changed = true;
        }
        Ok(changed)
    }

    /// Index of the key that signs at `now`: the newest key published at least
    /// [`ACTIVATION_DELAY`] ago, or the first key when none is that old (a new region).
    fn active_index(&self, now: Timestamp) -> usize {
        self.keys
            .iter()
            .rposition(|k| now.duration_since(k.created_at) >= to_signed(ACTIVATION_DELAY))
            .unwrap_or(0)
    }

    /// The `tokens` section of the document.
    pub fn tokens_config(&self, now: Timestamp, ttl: Duration) -> TokensConfig {
        TokensConfig {
            active: (!self.keys.is_empty()).then(|| self.keys[self.active_index(now)].id.clone()),
            keys: self
                .keys
                .iter()
                .map(|k| SigningKey {
                    id: k.id.clone(),
                    algorithm: SigningAlgorithm::ES256,
                    private_key: k.private_key.clone(),
                })
                .collect(),
            ttl: HumanDuration(ttl),
            ..TokensConfig::default()
        }
    }

    /// When the ring next needs [`KeyRing::rotate`] or a new document (a key becoming
    /// active), after `now`.
    pub fn next_change(&self, now: Timestamp, rotation: Duration) -> Option<Timestamp> {
        let newest = self.keys.last()?;
        let activation = newest.created_at + to_signed(ACTIVATION_DELAY);
        let rotation_due = newest.created_at + to_signed(rotation);
        Some(if activation > now {
            activation
        } else {
            rotation_due
        })
    }
}

/// A key id from its creation time: sortable and unique per second.
fn key_id(now: Timestamp) -> String {
    format!("k{}", now.as_second())
}

/// A new ES256 private key, PKCS#8 PEM.
fn generate_pem() -> Result<String> {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    p256::SecretKey::random(&mut rand_core::OsRng)
        .to_pkcs8_pem(LineEnding::LF)
        .map(|pem| pem.to_string())
        .map_err(|e| Error::Crypto(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);
    const TTL: Duration = Duration::from_secs(300);

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn a_new_ring_gets_a_key_that_signs_at_once() {
        let mut ring = KeyRing::default();
        assert!(ring.rotate(at(0), HOUR, TTL).unwrap());
        let tokens = ring.tokens_config(at(0), TTL);
        assert_eq!(tokens.keys.len(), 1);
        assert_eq!(tokens.active.as_deref(), Some(ring.keys[0].id.as_str()));
        assert!(tokens.keys[0].private_key.contains("BEGIN PRIVATE KEY"));
        assert!(!ring.rotate(at(10), HOUR, TTL).unwrap(), "nothing due");
    }

    #[test]
    fn rotation_publishes_first_then_signs_then_retires_the_old_key() {
        let mut ring = KeyRing::default();
        ring.rotate(at(0), HOUR, TTL).unwrap();
        let first = ring.keys[0].id.clone();
        // Rotation due: a second key is published but the first still signs.
        assert!(ring.rotate(at(3600), HOUR, TTL).unwrap());
        assert_eq!(ring.keys.len(), 2);
        let second = ring.keys[1].id.clone();
        assert_ne!(first, second);
        assert_eq!(
            ring.tokens_config(at(3600), TTL).active.as_deref(),
            Some(first.as_str())
        );
        // After the activation delay the new key signs; the old one still verifies.
        let t = 3600 + 60;
        assert!(!ring.rotate(at(t), HOUR, TTL).unwrap());
        assert_eq!(
            ring.tokens_config(at(t), TTL).active.as_deref(),
            Some(second.as_str())
        );
        assert_eq!(ring.keys.len(), 2);
        // Tokens of the old key expire TTL after the switch (+ margin): then it goes.
        assert!(!ring.rotate(at(t + 300 + 59), HOUR, TTL).unwrap());
        assert_eq!(ring.keys.len(), 2);
        assert!(ring.rotate(at(t + 300 + 60), HOUR, TTL).unwrap());
        assert_eq!(ring.keys.len(), 1);
        assert_eq!(ring.keys[0].id, second);
    }

    #[test]
    fn round_trips_through_yaml() {
        let mut ring = KeyRing::default();
        ring.rotate(at(0), HOUR, TTL).unwrap();
        assert_eq!(KeyRing::from_yaml(&ring.to_yaml()).unwrap(), ring);
        assert!(KeyRing::from_yaml("keys: 3").is_err());
    }
}
