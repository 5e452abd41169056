//! The data plane's internal endpoints, as the operator calls them: retention plans and runs,
//! and usage.
//!
//! Each call carries a short-lived registry access token of subject `system:operator` that
//! lists `internal:retention:*` or `internal:usage:*`, signed with the region's active token key (the operator makes
//! the keys; the data plane verifies with the ones in the document). The token service never
//! issues such a token, so only the operator can call these endpoints.

use std::time::Duration;

use crds::config::{SigningAlgorithm, SigningKey};
use crds::retention::{RetentionRequest, RetentionResponse};
use crds::usage::UsageResponse;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::{Error, Result};

/// The subject of the operator's tokens (as the data plane expects it).
pub const OPERATOR_SUBJECT: &str = "system:operator";
/// Lifetime of a token the operator signs for one call.
const TOKEN_TTL: Duration = Duration::from_secs(300);
/// How long one call may take (a plan reads every repository in scope).
const CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// A retention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionCall {
    /// Plan, and keep the plan for the run.
    Plan,
    /// Run the kept plan.
    Run,
}

/// What a retention call answered.
#[derive(Debug)]
pub enum RetentionAnswer {
    /// Done.
    Done(RetentionResponse),
    /// The data plane refused the request as it stands (`409`: no plan was made with these
    /// rules; `400`: invalid): the message says why.
    Refused(String),
}

/// A client of one region's data plane.
#[derive(Debug, Clone)]
pub struct DataPlane {
    http: reqwest::Client,
    base: String,
    service: String,
}

#[derive(Serialize)]
struct Access<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    name: &'a str,
    actions: [&'a str; 1],
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: [Access<'a>; 1],
}

impl DataPlane {
    /// A client of the data plane at `base` (`http(s)://host[:port]`), whose token service
    /// is named `service` (the region's name).
    pub fn new(base: String, service: String) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| Error::DataPlane(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            service,
        })
    }

    /// A token for the internal endpoints of `resource` (`retention`, `usage`), signed with
    /// `key`, valid from `now`.
    pub fn token(&self, key: &SigningKey, now: Timestamp, resource: &str) -> Result<String> {
        let now = now.as_second().max(0) as u64;
        let claims = Claims {
            iss: &self.service,
            sub: OPERATOR_SUBJECT,
            aud: &self.service,
            exp: now + TOKEN_TTL.as_secs(),
            nbf: now,
            iat: now,
            jti: format!("{:032x}", rand_u128()),
            access: [Access {
                kind: "internal",
                name: resource,
                actions: ["*"],
            }],
        };
        let algorithm = match key.algorithm {
            SigningAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            SigningAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            SigningAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
        };
        let encoding = match key.algorithm {
            SigningAlgorithm::ES256 => {
                jsonwebtoken::EncodingKey::from_ec_pem(key.private_key.as_bytes())
            }
            SigningAlgorithm::EdDSA => {
                jsonwebtoken::EncodingKey::from_ed_pem(key.private_key.as_bytes())
            }
            SigningAlgorithm::RS256 => {
                jsonwebtoken::EncodingKey::from_rsa_pem(key.private_key.as_bytes())
            }
        }
        .map_err(|e| Error::Crypto(format!("token key {}: {e}", key.id)))?;
        let mut header = jsonwebtoken::Header::new(algorithm);
        header.kid = Some(key.id.clone());
        jsonwebtoken::encode(&header, &claims, &encoding)
            .map_err(|e| Error::Crypto(format!("signing a token: {e}")))
    }

    /// Plans or runs a retention policy.
    pub async fn retention(
        &self,
        call: RetentionCall,
        token: &str,
        request: &RetentionRequest,
    ) -> Result<RetentionAnswer> {
        let path = match call {
            RetentionCall::Plan => "plan",
            RetentionCall::Run => "run",
        };
        let url = format!("{}/internal/v1/retention/{path}", self.base);
        let response = self
            .http
            .post(&url)
            .bearer_auth(token)
            .json(request)
            .send()
            .await
            .map_err(|e| Error::DataPlane(format!("{url}: {e}")))?;
        let status = response.status();
        if status.is_success() {
            let answer = response
                .json::<RetentionResponse>()
                .await
                .map_err(|e| Error::DataPlane(format!("{url}: unreadable answer: {e}")))?;
            return Ok(RetentionAnswer::Done(answer));
        }
        let message = response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| status.to_string());
        match status.as_u16() {
            400 | 409 => Ok(RetentionAnswer::Refused(message)),
            _ => Err(Error::DataPlane(format!("{url}: {status}: {message}"))),
        }
    }
}

impl DataPlane {
    /// Every namespace's metered usage.
    pub async fn usage(&self, token: &str) -> Result<UsageResponse> {
        let url = format!("{}/internal/v1/usage", self.base);
        let response = self
            .http
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| Error::DataPlane(format!("{url}: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::DataPlane(format!("{url}: {status}")));
        }
        response
            .json::<UsageResponse>()
            .await
            .map_err(|e| Error::DataPlane(format!("{url}: unreadable answer: {e}")))
    }
}

/// A random 128-bit number (token ids).
fn rand_u128() -> u128 {
    use rand_core::RngCore as _;
    let mut bytes = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut bytes);
    u128::from_le_bytes(bytes)
}
