//! A kubelet image credential provider (`credentialprovider.kubelet.k8s.io/v1`) for the
//! registry: pods pull private images with no stored Secret.
//!
//! The kubelet runs the provider for every image that matches its `matchImages`, with the
//! pod's ServiceAccount token on stdin (`tokenAttributes` in the kubelet's
//! `CredentialProviderConfig`). The provider exchanges that token at the registry's token
//! endpoint (an OAuth 2.0 token exchange, which the registry accepts when a
//! `RegistryCredential` with `workloadIdentity` trusts the cluster's issuer and the claim
//! rules match the ServiceAccount), and returns the registry's refresh token for user
//! `<token>`: pull only, for at most an hour, never past the ServiceAccount token, and cached
//! by the kubelet for less than its lifetime.
//!
//! - [`protocol`]: the request and response the kubelet exchanges with the provider.
//! - [`image`]: the registry host and repository of an image reference.
//! - [`challenge`]: the token endpoint, from the registry's `WWW-Authenticate` challenge.
//! - [`exchange`]: the HTTP calls.

pub mod challenge;
pub mod exchange;
pub mod image;
pub mod protocol;

/// Why no credentials could be provided. The message is what the kubelet logs.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The request on stdin is not a credential provider request.
    #[error("invalid request from the kubelet: {0}")]
    Request(String),
    /// The kubelet sent no ServiceAccount token.
    #[error(
        "no service account token in the request: set tokenAttributes.serviceAccountTokenAudience \
         for this provider in the kubelet's CredentialProviderConfig"
    )]
    NoToken,
    /// The image reference names no registry this provider can serve.
    #[error("image {0:?}: {1}")]
    Image(String, String),
    /// The registry's challenge is missing or not a Bearer challenge.
    #[error("registry {0}: {1}")]
    Challenge(String, String),
    /// A request failed.
    #[error("{0}")]
    Http(String),
    /// The token endpoint refused the exchange (its message says why).
    #[error("the registry refused the token exchange ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The OAuth error description.
        message: String,
    },
}
