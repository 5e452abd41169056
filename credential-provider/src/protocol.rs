//! `credentialprovider.kubelet.k8s.io/v1`: the request the kubelet writes to the provider's
//! stdin and the response it reads from its stdout.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ProviderError;

/// The API version spoken.
pub const API_VERSION: &str = "credentialprovider.kubelet.k8s.io/v1";

/// What the kubelet asks for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialProviderRequest {
    /// `credentialprovider.kubelet.k8s.io/v1`.
    pub api_version: String,
    /// `CredentialProviderRequest`.
    pub kind: String,
    /// The image being pulled.
    pub image: String,
    /// The pod's ServiceAccount token, for the audience configured in `tokenAttributes`.
    #[serde(default)]
    pub service_account_token: String,
    /// Annotations of the pod's ServiceAccount the configuration asked for (unused).
    #[serde(default)]
    pub service_account_annotations: BTreeMap<String, String>,
}

impl CredentialProviderRequest {
    /// Parses and checks a request.
    pub fn parse(input: &[u8]) -> Result<Self, ProviderError> {
        let request: Self =
            serde_json::from_slice(input).map_err(|e| ProviderError::Request(e.to_string()))?;
        if request.api_version != API_VERSION || request.kind != "CredentialProviderRequest" {
            return Err(ProviderError::Request(format!(
                "expected {API_VERSION} CredentialProviderRequest, got {} {}",
                request.api_version, request.kind
            )));
        }
        if request.image.is_empty() {
            return Err(ProviderError::Request("no image".into()));
        }
        if request.service_account_token.is_empty() {
            return Err(ProviderError::NoToken);
        }
        Ok(request)
    }
}

/// A user name and password for a registry host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthConfig {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

/// What the provider answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialProviderResponse {
    /// `credentialprovider.kubelet.k8s.io/v1`.
    pub api_version: &'static str,
    /// `CredentialProviderResponse`.
    pub kind: &'static str,
    /// `Registry`: the credentials are good for every image of the host.
    pub cache_key_type: &'static str,
    /// How long the kubelet may keep the credentials (a Go duration, `295s`).
    pub cache_duration: String,
    /// Credentials by registry host.
    pub auth: BTreeMap<String, AuthConfig>,
}

impl CredentialProviderResponse {
    /// Credentials for `host`, cached for `cache`.
    pub fn new(host: &str, auth: AuthConfig, cache: Duration) -> Self {
        Self {
            api_version: API_VERSION,
            kind: "CredentialProviderResponse",
            cache_key_type: "Registry",
            cache_duration: format!("{}s", cache.as_secs()),
            auth: BTreeMap::from([(host.to_owned(), auth)]),
        }
    }
}

/// How long the kubelet may cache a credential that stays valid for `lifetime`: four fifths
/// of it, so that a cached credential is replaced well before it expires.
pub fn cache_duration(lifetime: Duration) -> Duration {
    lifetime * 4 / 5
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked() {
        let ok = br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest",
            "image":"registry.example.com/acme/app:v1","serviceAccountToken":"jwt","serviceAccountAnnotations":{}}"#;
        let request = CredentialProviderRequest::parse(ok).unwrap();
        assert_eq!(request.image, "registry.example.com/acme/app:v1");
        assert_eq!(request.service_account_token, "jwt");

        let no_token = br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"r.example.com/a/b"}"#;
        let err = CredentialProviderRequest::parse(no_token).unwrap_err();
        assert!(matches!(err, ProviderError::NoToken), "{err}");
        assert!(err.to_string().contains("tokenAttributes"), "{err}");

        let old = br#"{"apiVersion":"credentialprovider.kubelet.k8s.io/v1alpha1","kind":"CredentialProviderRequest","image":"x","serviceAccountToken":"t"}"#;
        let err = CredentialProviderRequest::parse(old)
            .unwrap_err()
            .to_string();
        assert!(err.contains("v1alpha1"), "{err}");
        assert!(CredentialProviderRequest::parse(b"{").is_err());
    }

    #[test]
    fn responses_are_what_the_kubelet_reads() {
        let response = CredentialProviderResponse::new(
            "registry.example.com:5000",
            AuthConfig {
                username: "<token>".into(),
                password: "refresh".into(),
            },
            Duration::from_secs(540),
        );
        let json = serde_json::to_value(&response).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                "kind": "CredentialProviderResponse",
                "cacheKeyType": "Registry",
                "cacheDuration": "540s",
                "auth": {"registry.example.com:5000": {"username": "<token>", "password": "refresh"}},
            })
        );
    }

    #[test]
    fn the_cache_ends_before_the_credential() {
        assert_eq!(
            cache_duration(Duration::from_secs(3600)),
            Duration::from_secs(2880)
        );
        assert_eq!(
            cache_duration(Duration::from_secs(600)),
            Duration::from_secs(480)
        );
        assert_eq!(
            cache_duration(Duration::from_secs(10)),
            Duration::from_secs(8)
        );
        assert_eq!(cache_duration(Duration::ZERO), Duration::ZERO);
    }
}
