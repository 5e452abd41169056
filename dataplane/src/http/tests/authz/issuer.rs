//! A minimal OIDC issuer on a loopback port: a discovery document and a JWKS with one ES256
//! key, and a way to sign tokens with it.

use axum::Json;
use axum::Router;
use axum::routing::get;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The issuer; stops serving when dropped.
pub struct TestIssuer {
    url: String,
    key: EncodingKey,
    task: JoinHandle<()>,
}

impl TestIssuer {
    /// Starts an issuer on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let point = secret.public_key().to_encoded_point(false);
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "test-key",
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
        });
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let discovery = json!({
            "issuer": url, "jwks_uri": format!("{url}/keys"),
            "id_token_signing_alg_values_supported": ["ES256"],
        });
        let keys = json!({ "keys": [jwk] });
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { Json(discovery) }),
            )
            .route("/keys", get(move || async move { Json(keys) }));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, key, task }
    }

    /// The issuer URL (`iss`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Signs `claims` with the published key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("test-key".into());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
