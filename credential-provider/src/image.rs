//! The registry host and repository of an image reference (`host[:port]/path[:tag][@digest]`).

use crate::ProviderError;

/// An image reference, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host` or `host:port`.
    pub host: String,
    /// The repository path, without tag or digest.
    pub repository: String,
}

impl ImageRef {
    /// Splits `image`. A reference without a registry host (`nginx`, `library/nginx`) is
    /// Docker Hub's, never this registry's, and is refused.
    pub fn parse(image: &str) -> Result<Self, ProviderError> {
        let refused = |why: &str| ProviderError::Image(image.to_owned(), why.to_owned());
        let (host, rest) = image
            .split_once('/')
            .ok_or_else(|| refused("no registry host"))?;
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(refused("no registry host (a Docker Hub image)"));
        }
        let without_digest = rest.split_once('@').map_or(rest, |(path, _)| path);
        // A tag follows the last ':' of the last path segment.
        let repository = match without_digest.rsplit_once(':') {
            Some((path, tag)) if !tag.contains('/') => path,
            _ => without_digest,
        };
        if repository.is_empty()
            || !repository.split('/').all(|segment| {
                !segment.is_empty()
                    && segment
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            })
        {
            return Err(refused("not a valid repository name"));
        }
        Ok(Self {
            host: host.to_owned(),
            repository: repository.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_host_and_repository() {
        for (image, host, repository) in [
            (
                "registry.example.com/acme/app:v1",
                "registry.example.com",
                "acme/app",
            ),
            ("127.0.0.1:5000/acme/app", "127.0.0.1:5000", "acme/app"),
            (
                "r.example.com:443/acme/tools/cli@sha256:0123",
                "r.example.com:443",
                "acme/tools/cli",
            ),
            (
                "r.example.com/acme/app:v1@sha256:0123",
                "r.example.com",
                "acme/app",
            ),
            ("localhost/acme/app", "localhost", "acme/app"),
        ] {
            let parsed = ImageRef::parse(image).unwrap();
            assert_eq!(
                (parsed.host.as_str(), parsed.repository.as_str()),
                (host, repository),
                "{image}"
            );
        }
        for image in [
            "nginx",
            "library/nginx:1",
            "r.example.com/",
            "r.example.com/Acme/app",
        ] {
            assert!(ImageRef::parse(image).is_err(), "{image}");
        }
    }
}
