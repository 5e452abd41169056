//! Content digests (`algorithm:hex`) and the streaming hasher that computes them.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};

/// A digest algorithm this registry can compute and verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    /// SHA-256, the default for OCI content.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl DigestAlgorithm {
    /// The algorithm's name as written in a digest string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    /// Length of the lowercase hex encoding of this algorithm's output.
    pub fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha512 => 128,
        }
    }

    /// Parses an algorithm name (`sha256`, `sha512`).
    pub fn parse(name: &str) -> Result<Self, DigestError> {
        match name {
            "sha256" => Ok(Self::Sha256),
            "sha512" => Ok(Self::Sha512),
            other if is_valid_algorithm_grammar(other) => {
                Err(DigestError::UnsupportedAlgorithm(other.to_owned()))
            }
            _ => Err(DigestError::Malformed),
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Not of the form `algorithm:encoded` with the OCI grammar.
    #[error("digest is not of the form algorithm:hex")]
    Malformed,
    /// Well-formed, but an algorithm this registry does not support.
    #[error("digest algorithm {0:?} is not supported (use sha256 or sha512)")]
    UnsupportedAlgorithm(String),
    /// Supported algorithm, but the encoded part is not lowercase hex of the right length.
    #[error("{algorithm} digest must be {expected} lowercase hex characters")]
    BadEncoding {
        /// The digest's algorithm.
        algorithm: DigestAlgorithm,
        /// Expected number of hex characters.
        expected: usize,
    },
}

/// A validated content digest such as `sha256:e3b0c4...`.
///
/// Guarantee: the algorithm is supported and the hex part is lowercase and of the exact length,
/// so the digest is safe to use as a path or key component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: DigestAlgorithm,
    hex: String,
}

impl Digest {
    /// The digest's algorithm.
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The lowercase hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Digest of a byte slice held in memory (manifests, small test data).
    pub fn of(algorithm: DigestAlgorithm, data: &[u8]) -> Self {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(data);
        hasher.finish()
    }

    /// SHA-256 digest of a byte slice.
    pub fn sha256_of(data: &[u8]) -> Self {
        Self::of(DigestAlgorithm::Sha256, data)
    }
}

fn is_valid_algorithm_grammar(s: &str) -> bool {
    // algorithm-component ([+._-] algorithm-component)*, component = [a-z0-9]+
    !s.is_empty()
        && s.split(['+', '.', '_', '-']).all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, encoded) = s.split_once(':').ok_or(DigestError::Malformed)?;
        let algorithm = DigestAlgorithm::parse(algorithm)?;
        let valid = encoded.len() == algorithm.hex_len()
            && encoded
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(DigestError::BadEncoding {
                algorithm,
                expected: algorithm.hex_len(),
            });
        }
        Ok(Self {
            algorithm,
            hex: encoded.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental hasher for one digest algorithm; blobs are streamed through it chunk by chunk.
#[derive(Debug, Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(sha2::Sha256),
    /// SHA-512 state.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        match algorithm {
            DigestAlgorithm::Sha256 => Self::Sha256(sha2::Sha256::new()),
            DigestAlgorithm::Sha512 => Self::Sha512(sha2::Sha512::new()),
        }
    }

    /// The algorithm this hasher computes.
    pub fn algorithm(&self) -> DigestAlgorithm {
        match self {
            Self::Sha256(_) => DigestAlgorithm::Sha256,
            Self::Sha512(_) => DigestAlgorithm::Sha512,
        }
    }

    /// Feeds more bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far (the hasher itself is left untouched).
    pub fn digest(&self) -> Digest {
        self.clone().finish()
    }

    /// The hasher's internal state, from which [`Hasher::resume`] continues (in this or
    /// another process, with the same algorithm).
    pub fn state(&self) -> Vec<u8> {
        match self {
            Self::Sha256(h) => h.serialize().to_vec(),
            Self::Sha512(h) => h.serialize().to_vec(),
        }
    }

    /// A hasher for `algorithm` continuing from [`Hasher::state`]'s bytes; `None` when they
    /// are not a state of that algorithm.
    pub fn resume(algorithm: DigestAlgorithm, state: &[u8]) -> Option<Self> {
        fn restore<H: SerializableState>(state: &[u8]) -> Option<H> {
            let state = SerializedState::<H>::try_from(state).ok()?;
            H::deserialize(&state).ok()
        }
        match algorithm {
            DigestAlgorithm::Sha256 => restore(state).map(Self::Sha256),
            DigestAlgorithm::Sha512 => restore(state).map(Self::Sha512),
        }
    }

    /// Consumes the hasher and returns the digest.
    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Self::Sha256(h) => (DigestAlgorithm::Sha256, hex::encode(h.finalize())),
            Self::Sha512(h) => (DigestAlgorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn a_resumed_hasher_continues_where_the_state_was_taken() {
        for algorithm in [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512] {
            let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
            let mut first = Hasher::new(algorithm);
            first.update(&data[..333]);
            let state = first.state();
            let mut resumed = Hasher::resume(algorithm, &state).unwrap();
            resumed.update(&data[333..]);
            assert_eq!(
                resumed.finish(),
                Digest::of(algorithm, &data),
                "{algorithm:?}"
            );
        }
        let sha256_state = Hasher::new(DigestAlgorithm::Sha256).state();
        assert!(Hasher::resume(DigestAlgorithm::Sha512, &sha256_state).is_none());
        assert!(Hasher::resume(DigestAlgorithm::Sha256, b"not a state").is_none());
    }

    #[test]
    fn parses_and_prints_sha256() {
        let d: Digest = EMPTY_SHA256.parse().unwrap();
        assert_eq!(d.algorithm(), DigestAlgorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY_SHA256);
        assert_eq!(Digest::sha256_of(b""), d);
    }

    #[test]
    fn computes_sha512() {
        let d = Digest::of(DigestAlgorithm::Sha512, b"abc");
        assert_eq!(
            d.hex(),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn rejects_bad_digests() {
        assert_eq!("sha256".parse::<Digest>(), Err(DigestError::Malformed));
        assert_eq!("SHA256:00".parse::<Digest>(), Err(DigestError::Malformed));
        assert!(matches!(
            "md5:d41d8cd98f00b204e9800998ecf8427e".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
                .parse::<Digest>(),
            Err(DigestError::BadEncoding { .. })
        ));
        assert!(matches!(
            "sha256:../../etc/passwd".parse::<Digest>(),
            Err(DigestError::BadEncoding { .. })
        ));
        assert!(matches!(
            "sha256:abc".parse::<Digest>(),
            Err(DigestError::BadEncoding { .. })
        ));
    }

    #[test]
    fn incremental_equals_one_shot() {
        let mut h = Hasher::new(DigestAlgorithm::Sha256);
        h.update(b"hello ");
        let mid = h.digest();
        h.update(b"world");
        assert_ne!(mid, h.digest());
        assert_eq!(h.finish(), Digest::sha256_of(b"hello world"));
    }
}
