//! Repository names, tags and manifest references, validated against the OCI grammar.

use std::fmt;
use std::str::FromStr;

use super::{Digest, DigestError};

/// Longest repository name accepted (OCI distribution spec recommendation).
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag accepted by the OCI grammar.
pub const MAX_TAG_LEN: usize = 128;

/// Why a repository name, tag or reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The repository name breaks the OCI name grammar.
    #[error(
        "invalid repository name: {0} (lowercase letters, digits and separators ._- between them, path components joined by single '/')"
    )]
    InvalidName(&'static str),
    /// The tag breaks the OCI tag grammar.
    #[error("invalid tag: must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
    InvalidTag,
    /// The reference looked like a digest but is not a valid one.
    #[error("invalid digest reference: {0}")]
    InvalidDigest(#[from] DigestError),
}

/// A validated repository name, e.g. `acme-platform/api-server`.
///
/// Guarantee: matches `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
/// and is at most 255 bytes, so it can never contain `..`, empty components or characters that
/// are special in paths or storage keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    /// The full name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The registry namespace: the first path component (`acme-platform` in
    /// `acme-platform/api-server`).
    pub fn namespace(&self) -> &str {
        self.0.split('/').next().unwrap_or(&self.0)
    }

    /// The path components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

fn valid_component(c: &str) -> Result<(), NameError> {
    let b = c.as_bytes();
    if b.is_empty() {
        return Err(NameError::InvalidName(
            "empty path component (leading, trailing or double '/')",
        ));
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(NameError::InvalidName(
            "each component must start and end with a lowercase letter or digit",
        ));
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err(NameError::InvalidName(
                "only '.', '_', '__' or dashes may separate letters and digits",
            ));
        }
    }
    Ok(())
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NameError::InvalidName("empty"));
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::InvalidName("longer than 255 characters"));
        }
        s.split('/').try_for_each(valid_component)?;
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated tag, e.g. `v1.2.0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// The tag text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|&x| x.is_ascii_alphanumeric() || x == b'_');
        let rest_ok = b
            .iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'));
        if first_ok && rest_ok && b.len() <= MAX_TAG_LEN {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::InvalidTag)
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `<reference>` of a manifest URL: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A mutable tag.
    Tag(Tag),
    /// An immutable content digest.
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Self::Digest(s.parse()?))
        } else {
            Ok(Self::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tag(t) => t.fmt(f),
            Self::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for n in [
            "a",
            "acme-platform/api-server",
            "a/b/c/d",
            "foo__bar",
            "foo.bar_baz--qux",
            "library/ubuntu",
            "0/1",
        ] {
            let name: RepoName = n.parse().unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!(name.as_str(), n);
        }
        let name: RepoName = "acme-platform/tools/api".parse().unwrap();
        assert_eq!(name.namespace(), "acme-platform");
    }

    #[test]
    fn rejects_invalid_names() {
        let long = "a".repeat(256);
        for n in [
            "",
            "Upper/case",
            "a/../b",
            "..",
            "a//b",
            "/a",
            "a/",
            "a/.",
            "a___b",
            "a.-b",
            "-a",
            "a-",
            "a%2fb",
            "a\\b",
            "a b",
            long.as_str(),
        ] {
            assert!(n.parse::<RepoName>().is_err(), "{n:?} should be rejected");
        }
        assert!("a".repeat(255).parse::<RepoName>().is_ok());
    }

    #[test]
    fn tags_follow_the_grammar() {
        for t in ["latest", "v1.2.0", "_x", "A-b.c_d", &"a".repeat(128)] {
            assert!(t.parse::<Tag>().is_ok(), "{t}");
        }
        for t in ["", ".x", "-x", "a/b", "a:b", &"a".repeat(129)] {
            assert!(t.parse::<Tag>().is_err(), "{t}");
        }
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert!(matches!("v1".parse::<Reference>(), Ok(Reference::Tag(_))));
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(matches!(d.parse::<Reference>(), Ok(Reference::Digest(_))));
        assert!("sha256:zz".parse::<Reference>().is_err());
    }
}
