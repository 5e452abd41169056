//! OCI vocabulary shared by every layer: repository names, tags, references and digests.
//!
//! Layer rule: this module is pure (no I/O, no storage, no HTTP). Everything that enters the
//! registry from a client is parsed into these types once, at the HTTP boundary; the layers
//! below only ever see validated values.

mod digest;
mod name;

pub use digest::{Digest, DigestAlgorithm, DigestError, Hasher};
pub use name::{NameError, Reference, RepoName, Tag};
