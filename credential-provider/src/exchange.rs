//! The HTTP calls: the registry's challenge, then the token exchange at its token endpoint.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use crate::ProviderError;
use crate::challenge::Challenge;
use crate::image::ImageRef;
use crate::protocol::{
    AuthConfig, CredentialProviderRequest, CredentialProviderResponse, cache_duration,
};

/// The OAuth grant type of a token exchange.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The user name the registry accepts a refresh token for, as a password.
pub const TOKEN_USERNAME: &str = "<token>";

/// How the registry is reached.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Talk to the registry over plain HTTP (a registry on loopback, for tests).
    pub plain_http: bool,
    /// PEM certificates trusted for the registry's HTTPS, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// How long each request may take.
    pub timeout: Duration,
}

/// Exchanges the request's ServiceAccount token for registry credentials for its image.
pub async fn credentials(
    request: &CredentialProviderRequest,
    options: &Options,
) -> Result<CredentialProviderResponse, ProviderError> {
    let image = ImageRef::parse(&request.image)?;
    let client = client(options)?;
    let scheme = if options.plain_http { "http" } else { "https" };
    let base = format!("{scheme}://{}/v2/", image.host);
    let response = client.get(&base).send().await.map_err(http(&base))?;
    if response.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Err(ProviderError::Challenge(
            image.host.clone(),
            format!(
                "{base} answered {} instead of a 401 challenge",
                response.status()
            ),
        ));
    }
    let header = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let challenge = Challenge::parse(&image.host, header, options.plain_http)?;
    let scope = format!("repository:{}:pull", image.repository);
    let form = [
        ("grant_type", TOKEN_EXCHANGE_GRANT),
        ("subject_token", request.service_account_token.as_str()),
        ("service", challenge.service.as_str()),
        ("scope", scope.as_str()),
        ("access_type", "offline"),
        ("client_id", "registry-credential-provider"),
    ];
    let response = client
        .post(&challenge.realm)
        .form(&form)
        .send()
        .await
        .map_err(http(&challenge.realm))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        return Err(ProviderError::Refused {
            status: status.as_u16(),
            message: body["error_description"]
                .as_str()
                .or(body["error"].as_str())
                .unwrap_or("no reason given")
                .to_owned(),
        });
    }
    let refresh = body["refresh_token"].as_str().ok_or_else(|| {
        ProviderError::Http(format!(
            "{} issued no refresh token: the registry is too old for this provider",
            challenge.realm
        ))
    })?;
    let lifetime = lifetime(refresh, SystemTime::now());
    Ok(CredentialProviderResponse::new(
        &image.host,
        AuthConfig {
            username: TOKEN_USERNAME.to_owned(),
            password: refresh.to_owned(),
        },
        cache_duration(lifetime),
    ))
}

/// How long a token stays valid from `now`, by its `exp` claim (zero when it has none: the
/// kubelet then does not cache it).
pub fn lifetime(token: &str, now: SystemTime) -> Duration {
    let exp = token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload.trim_end_matches('='))
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .and_then(|claims| claims["exp"].as_u64());
    match exp {
        Some(exp) => (UNIX_EPOCH + Duration::from_secs(exp))
            .duration_since(now)
            .unwrap_or_default(),
        None => Duration::ZERO,
    }
}

fn client(options: &Options) -> Result<reqwest::Client, ProviderError> {
    let mut builder = reqwest::Client::builder()
        .timeout(options.timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &options.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| ProviderError::Http(format!("cannot read {}: {e}", path.display())))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ProviderError::Http(format!("{}: {e}", path.display())))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| ProviderError::Http(e.to_string()))
}

fn http(url: &str) -> impl Fn(reqwest::Error) -> ProviderError + '_ {
    move |e| ProviderError::Http(format!("{url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lifetime_is_read_from_the_token() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":1600}"#);
        assert_eq!(
            lifetime(&format!("h.{payload}.s"), now),
            Duration::from_secs(600)
        );
        let past = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"exp":10}"#);
        assert_eq!(lifetime(&format!("h.{past}.s"), now), Duration::ZERO);
        assert_eq!(lifetime("opaque", now), Duration::ZERO);
    }
}
