//! An issuer's published signing keys (JWKS), reduced to the public keys this verifier
//! may use: RSA, EC P-256/P-384 and Ed25519 signature keys. Symmetric keys, encryption
//! keys and keys of unknown types are skipped, never an error, so that one odd entry does
//! not make the whole set unusable.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// Smallest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// The shape of a public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        match self {
            KeyKind::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            KeyKind::P256 => alg == Algorithm::ES256,
            KeyKind::P384 => alg == Algorithm::ES384,
            KeyKind::Ed25519 => alg == Algorithm::EdDSA,
        }
    }
}

/// One usable public key.
#[derive(Debug, Clone)]
pub(super) struct PublicKey {
    kid: Option<String>,
    kind: KeyKind,
    /// The JWK's `alg`, when it pins one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl PublicKey {
    /// The key in the form signature verification takes.
    pub(super) fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }

    fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }
}

/// The usable keys of one JWKS document.
#[derive(Debug, Clone, Default)]
pub(super) struct KeySet {
    keys: Vec<PublicKey>,
}

/// Which key verifies a token.
#[derive(Debug)]
pub(super) enum Selection<'a> {
    /// This one.
    Found(&'a PublicKey),
    /// No key fits (unknown `kid`, or no key of the token's type).
    Missing,
    /// The token names no `kid` and several keys fit.
    Ambiguous,
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    key_use: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

impl KeySet {
    /// Parses a JWKS document. Fails only when the document itself is not a JWKS; unusable
    /// keys in it are skipped.
    pub(super) fn parse(document: &[u8]) -> Result<KeySet, String> {
        let doc: JwksDocument =
            serde_json::from_slice(document).map_err(|e| format!("not a JWKS document: {e}"))?;
        let keys = doc
            .keys
            .into_iter()
            .filter_map(|value| serde_json::from_value::<RawJwk>(value).ok())
            .filter_map(public_key)
            .collect();
        Ok(KeySet { keys })
    }

    /// Number of usable keys.
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key that verifies a token signed with `alg` under `kid`: the key with that id
    /// (and a type that fits `alg`), or without a `kid` the only key that fits.
    pub(super) fn select(&self, kid: Option<&str>, alg: Algorithm) -> Selection<'_> {
        let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
        match kid {
            Some(kid) => fitting
                .find(|k| k.kid.as_deref() == Some(kid))
                .map_or(Selection::Missing, Selection::Found),
            None => match (fitting.next(), fitting.next()) {
                (None, _) => Selection::Missing,
                (Some(key), None) => Selection::Found(key),
                (Some(_), Some(_)) => Selection::Ambiguous,
            },
        }
    }
}

fn public_key(jwk: RawJwk) -> Option<PublicKey> {
    if jwk.key_use.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let alg = match jwk.alg.as_deref() {
        None => None,
        // A key pinned to an algorithm this verifier refuses is of no use.
        Some(alg) => Some(super::jwt::asymmetric_algorithm(alg)?),
    };
    let (kind, key) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => {
            let (n, e) = (jwk.n?, jwk.e?);
            let modulus = URL_SAFE_NO_PAD.decode(&n).ok()?;
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            if significant * 8 < MIN_RSA_BITS {
                return None;
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_components(&n, &e).ok()?)
        }
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let (kind, len) = if crv == "P-256" {
                (KeyKind::P256, 32)
            } else {
                (KeyKind::P384, 48)
            };
            let (x, y) = (jwk.x?, jwk.y?);
            let coordinate_ok = |c: &str| {
                URL_SAFE_NO_PAD
                    .decode(c)
                    .is_ok_and(|bytes| bytes.len() == len)
            };
            if !coordinate_ok(&x) || !coordinate_ok(&y) {
                return None;
            }
            (kind, DecodingKey::from_ec_components(&x, &y).ok()?)
        }
        ("OKP", Some("Ed25519")) => {
            let x = jwk.x?;
            if URL_SAFE_NO_PAD.decode(&x).ok()?.len() != 32 {
                return None;
            }
            (KeyKind::Ed25519, DecodingKey::from_ed_components(&x).ok()?)
        }
        _ => return None,
    };
    let public = PublicKey {
        kid: jwk.kid,
        kind,
        alg,
        key,
    };
    public.alg.is_none_or(|a| kind.fits(a)).then_some(public)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn unusable_keys_are_skipped() {
        let rsa_n = b64(&[0xc5; 256]);
        let doc = json!({"keys": [
            {"kty": "oct", "k": b64(b"secret"), "kid": "hmac"},
            {"kty": "RSA", "n": b64(&[0xc5; 128]), "e": "AQAB", "kid": "short"},
            {"kty": "RSA", "n": rsa_n, "e": "AQAB", "kid": "enc", "use": "enc"},
            {"kty": "RSA", "n": rsa_n, "e": "AQAB", "kid": "hs", "alg": "HS256"},
            {"kty": "EC", "crv": "P-521", "x": b64(&[1; 66]), "y": b64(&[1; 66]), "kid": "p521"},
            {"kty": "EC", "crv": "P-256", "x": b64(&[1; 31]), "y": b64(&[1; 32]), "kid": "bad"},
            {"kty": "EC", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[1; 32]), "kid": "ec",
             "alg": "RS256"},
            "not an object",
            {"kty": "RSA", "n": rsa_n, "e": "AQAB", "kid": "rsa", "alg": "RS256", "use": "sig"},
            {"kty": "OKP", "crv": "Ed25519", "x": b64(&[7; 32]), "kid": "ed"},
        ]});
        let set = KeySet::parse(&serde_json::to_vec(&doc).expect("json")).expect("parses");
        assert_eq!(set.len(), 2);
        assert!(matches!(
            set.select(Some("rsa"), Algorithm::RS256),
            Selection::Found(_)
        ));
        assert!(
            matches!(
                set.select(Some("rsa"), Algorithm::PS256),
                Selection::Missing
            ),
            "the key is pinned to RS256"
        );
        assert!(matches!(
            set.select(None, Algorithm::EdDSA),
            Selection::Found(_)
        ));
        assert!(matches!(
            set.select(Some("hmac"), Algorithm::RS256),
            Selection::Missing
        ));
        assert!(KeySet::parse(b"{\"nokeys\": []}").is_err());
        assert!(KeySet::parse(b"<html>").is_err());
    }

    #[test]
    fn without_kid_only_a_single_fitting_key_is_chosen() {
        let key = |kid: &str| json!({"kty": "EC", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32]), "kid": kid});
        let one = json!({"keys": [key("a")]});
        let two = json!({"keys": [key("a"), key("b")]});
        let one = KeySet::parse(&serde_json::to_vec(&one).expect("json")).expect("parses");
        let two = KeySet::parse(&serde_json::to_vec(&two).expect("json")).expect("parses");
        assert!(matches!(
            one.select(None, Algorithm::ES256),
            Selection::Found(_)
        ));
        assert!(matches!(
            one.select(None, Algorithm::ES384),
            Selection::Missing
        ));
        assert!(matches!(
            two.select(None, Algorithm::ES256),
            Selection::Ambiguous
        ));
        assert!(matches!(
            two.select(Some("b"), Algorithm::ES256),
            Selection::Found(_)
        ));
    }
}
