//! Verification against an in-process issuer: an axum server on loopback serving discovery
//! and a JWKS for keys generated here, with request counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::EncodePrivateKey as _;
use rsa::pkcs1::EncodeRsaPrivateKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{Value, json};

use super::*;
use crate::config::{ClaimRule, Scope};

const AUDIENCE: &str = "registry";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key and its public JWK.
#[derive(Clone)]
struct TestKey {
    kid: Option<String>,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl TestKey {
    fn es256(kid: &str) -> Self {
        let secret = p256::SecretKey::random(&mut rand_core::OsRng);
        let point = secret.public_key().to_encoded_point(false);
        let der = secret.to_pkcs8_der().expect("pkcs8");
        Self {
            kid: Some(kid.to_owned()),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y")),
            }),
        }
    }

    /// RSA generation is slow in unoptimised builds: one key per test process.
    fn rs256(kid: &str) -> Self {
        static RSA: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
        let key = RSA
            .get_or_init(|| rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).expect("rsa key"));
        let der = key.to_pkcs1_der().expect("pkcs1");
        Self {
            kid: Some(kid.to_owned()),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be()),
            }),
        }
    }

    fn ed25519_without_kid() -> Self {
        let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        let der = key.to_pkcs8_der().expect("pkcs8");
        Self {
            kid: None,
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            jwk: json!({
                "kty": "OKP", "crv": "Ed25519",
                "x": b64(key.verifying_key().as_bytes()),
            }),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

/// What the test issuer serves, changeable while it runs.
#[derive(Default)]
struct Served {
    /// The `issuer` of the discovery document (default: the server's URL).
    issuer: Option<String>,
    jwks: Value,
    /// Extra bytes of padding in the JWKS document.
    padding: usize,
    /// Answer every request with 503.
    down: bool,
    /// Answer JWKS requests after this long.
    jwks_delay: Duration,
}

#[derive(Default)]
struct IssuerState {
    url: OnceLock<String>,
    served: Mutex<Served>,
    discovery_hits: AtomicUsize,
    jwks_hits: AtomicUsize,
}

/// The in-process issuer; stops on drop.
struct TestIssuer {
    url: String,
    state: Arc<IssuerState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestIssuer {
    async fn start(keys: &[&TestKey]) -> Self {
        let state = Arc::new(IssuerState::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        state.url.set(url.clone()).expect("url set once");
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/keys", get(jwks))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve");
        });
        let issuer = Self { url, state, server };
        issuer.publish(keys);
        issuer
    }

    fn publish(&self, keys: &[&TestKey]) {
        let keys: Vec<Value> = keys.iter().map(|k| k.jwk.clone()).collect();
        self.served().jwks = json!({ "keys": keys });
    }

    fn served(&self) -> std::sync::MutexGuard<'_, Served> {
        self.state.served.lock().expect("served")
    }

    fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    fn discovery_hits(&self) -> usize {
        self.state.discovery_hits.load(Ordering::SeqCst)
    }

    /// Claims of a token valid now for `AUDIENCE` and `sub`.
    fn claims(&self, sub: &str) -> Value {
        let now = unix(SystemTime::now());
        json!({
            "iss": self.url, "sub": sub, "aud": AUDIENCE,
            "iat": now, "nbf": now, "exp": now + 600,
        })
    }
}

type Reply = Result<axum::Json<Value>, StatusCode>;

async fn discovery(State(state): State<Arc<IssuerState>>) -> Reply {
    state.discovery_hits.fetch_add(1, Ordering::SeqCst);
    let url = state.url.get().expect("url").clone();
    let served = state.served.lock().expect("served");
    if served.down {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let issuer = served.issuer.clone();
    Ok(axum::Json(json!({
        "issuer": issuer.unwrap_or_else(|| url.clone()),
        "jwks_uri": format!("{url}/keys"),
        "response_types_supported": ["id_token"],
    })))
}

async fn jwks(State(state): State<Arc<IssuerState>>) -> Reply {
    state.jwks_hits.fetch_add(1, Ordering::SeqCst);
    let delay = state.served.lock().expect("served").jwks_delay;
    tokio::time::sleep(delay).await;
    let served = state.served.lock().expect("served");
    if served.down {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let mut document = served.jwks.clone();
    if served.padding > 0 {
        document["padding"] = Value::String("x".repeat(served.padding));
    }
    Ok(axum::Json(document))
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs()
}

fn federation(
    name: &str,
    issuer: &str,
    audience: &str,
    rules: &[(&str, &[&str])],
) -> FederationConfig {
    FederationConfig {
        name: name.to_owned(),
        issuer: issuer.to_owned(),
        audience: audience.to_owned(),
        claim_rules: rules
            .iter()
            .map(|(claim, values)| ClaimRule {
                claim: (*claim).to_owned(),
                values: values.iter().map(|v| (*v).to_owned()).collect(),
            })
            .collect(),
        scope: Scope::ContainerRegistryPull,
        namespaces: vec!["team".to_owned()],
        ca_bundle: None,
    }
}

/// Settings for tests: short timeouts so failures show quickly.
fn quick() -> OidcSettings {
    OidcSettings {
        http_timeout: Duration::from_millis(500),
        ..OidcSettings::default()
    }
}

#[tokio::test]
async fn a_valid_token_matches_its_federation() {
    let es = TestKey::es256("es");
    let rs = TestKey::rs256("rs");
    let issuer = TestIssuer::start(&[&es, &rs]).await;
    let federations = [
        federation("other", "https://elsewhere.example", AUDIENCE, &[]),
        federation("ci", &issuer.url, AUDIENCE, &[("sub", &["builder"])]),
    ];
    let verifier = OidcVerifier::with_settings(quick());
    for key in [&es, &rs] {
        let claims = issuer.claims("builder");
        let exp = claims["exp"].as_u64().unwrap();
        let token = key.sign(&claims);
        let identities = verifier
            .verify(&token, &federations, SystemTime::now())
            .await
            .expect("valid token");
        assert_eq!(
            identities,
            vec![FederatedIdentity {
                federation: 1,
                name: "ci".to_owned(),
                issuer: issuer.url.clone(),
                subject: "builder".to_owned(),
                expires: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp)),
            }]
        );
    }
    assert_eq!(issuer.discovery_hits(), 1, "discovery is cached");
    assert_eq!(issuer.jwks_hits(), 1, "the key set is cached");
}

#[tokio::test]
async fn a_token_without_kid_uses_the_only_key() {
    let ed = TestKey::ed25519_without_kid();
    let issuer = TestIssuer::start(&[&ed]).await;
    let federations = [federation("ci", &issuer.url, AUDIENCE, &[])];
    let verifier = OidcVerifier::with_settings(quick());
    let token = ed.sign(&issuer.claims("builder"));
    let identities = verifier
        .verify(&token, &federations, SystemTime::now())
        .await
        .expect("valid EdDSA token");
    assert_eq!(identities.len(), 1);

    // With two keys of the type and no kid, the key is ambiguous.
    let other = TestKey::ed25519_without_kid();
    issuer.publish(&[&ed, &other]);
    let verifier = OidcVerifier::with_settings(quick());
    let err = verifier
        .verify(&token, &federations, SystemTime::now())
        .await
        .expect_err("ambiguous key");
    assert!(matches!(err, OidcError::UnknownKey), "{err:?}");
}

#[tokio::test]
async fn validity_period_is_checked_against_now() {
    let es = TestKey::es256("es");
    let issuer = TestIssuer::start(&[&es]).await;
    let federations = [federation("ci", &issuer.url, AUDIENCE, &[])];
    let verifier = OidcVerifier::with_settings(quick());
    let now = SystemTime::now();
    let t = unix(now);

    let mut expired = issuer.claims("builder");
    expired["iat"] = json!(t - 7200);
    expired["nbf"] = json!(t - 7200);
    expired["exp"] = json!(t - 3600);
    let err = verifier
        .verify(&es.sign(&expired), &federations, now)
        .await
        .expect_err("expired");
    assert!(matches!(err, OidcError::Expired), "{err:?}");
    assert_eq!(err.to_string(), "token has expired");

    let mut early = issuer.claims("builder");
    early["nbf"] = json!(t + 600);
    early["exp"] = json!(t + 1200);
    let err = verifier
        .verify(&es.sign(&early), &federations, now)
        .await
        .expect_err("not yet valid");
    assert!(matches!(err, OidcError::NotYetValid), "{err:?}");

    let mut no_exp = issuer.claims("builder");
    no_exp.as_object_mut().expect("object").remove("exp");
    let err = verifier
        .verify(&es.sign(&no_exp), &federations, now)
        .await
        .expect_err("exp is required");
    assert!(matches!(err, OidcError::MissingClaim("exp")), "{err:?}");

    // The same token is fine at a time inside its validity period.
    let at = now + Duration::from_secs(700);
    assert!(
        verifier
            .verify(&es.sign(&early), &federations, at)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn audience_and_issuer_must_be_accepted() {
    let es = TestKey::es256("es");
    let issuer = TestIssuer::start(&[&es]).await;
    let federations = [federation("ci", &issuer.url, AUDIENCE, &[])];
    let verifier = OidcVerifier::with_settings(quick());
    let now = SystemTime::now();

    let mut claims = issuer.claims("builder");
    claims["aud"] = json!(["someone-else", "another"]);
    let err = verifier
        .verify(&es.sign(&claims), &federations, now)
        .await
        .expect_err("wrong audience");
    assert!(matches!(err, OidcError::AudienceMismatch), "{err:?}");
    assert_eq!(err.to_string(), "token audience not accepted");

    claims["aud"] = json!(["someone-else", AUDIENCE]);
    assert!(
        verifier
            .verify(&es.sign(&claims), &federations, now)
            .await
            .is_ok(),
        "an array audience containing ours is accepted"
    );

    let mut claims = issuer.claims("builder");
    claims["iss"] = json!(format!("{}/other", issuer.url));
    let err = verifier
        .verify(&es.sign(&claims), &federations, now)
        .await
        .expect_err("unknown issuer");
    assert!(matches!(err, OidcError::UnknownIssuer), "{err:?}");
    claims["iss"] = json!(format!("{}/", issuer.url));
    let err = verifier
        .verify(&es.sign(&claims), &federations, now)
        .await
        .expect_err("issuers compare exactly");
    assert!(matches!(err, OidcError::UnknownIssuer), "{err:?}");
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_refused() {
    let es = TestKey::es256("es");
    let issuer = TestIssuer::start(&[&es]).await;
    issuer.served().issuer = Some("https://impostor.example".to_owned());
    let federations = [federation("ci", &issuer.url, AUDIENCE, &[])];
    let verifier = OidcVerifier::with_settings(quick());
    let err = verifier
        .verify(
            &es.sign(&issuer.claims("builder")),
            &federations,
            SystemTime::now(),
        )
        .await
        .expect_err("discovery issuer mismatch");
    assert!(matches!(err, OidcError::Discovery { .. }), "{err:?}");
    assert_eq!(
        issuer.jwks_hits(),
        0,
        "the JWKS of a mismatched issuer is not fetched"
    );
}

#[tokio::test]
async fn tampered_and_unsigned_tokens_are_refused() {
    let es = TestKey::es256("es");
    let issuer = TestIssuer::start(&[&es]).await;
    let federations = [federation(
        "ci",
        &issuer.url,
        AUDIENCE,
        &[("sub", &["builder"])],
    )];
    let verifier = OidcVerifier::with_settings(quick());
    let now = SystemTime::now();
    let token = es.sign(&issuer.claims("builder"));

    // A flipped signature byte.
    let (input, signature) = token.rsplit_once('.').expect("three parts");
    let mut sig = URL_SAFE_NO_PAD.decode(signature).expect("b64");
    sig[10] ^= 0x01;
    let tampered = format!("{input}.{}", b64(&sig));
    let err = verifier
        .verify(&tampered, &federations, now)
        .await
        .expect_err("tampered signature");
    assert!(matches!(err, OidcError::InvalidSignature), "{err:?}");

    // Another subject under the original signature.
    let (header, _) = input.split_once('.').expect("header");
    let forged = issuer.claims("admin");
    let forged = format!(
        "{header}.{}.{signature}",
        b64(&serde_json::to_vec(&forged).expect("json"))
    );
    let err = verifier
        .verify(&forged, &federations, now)
        .await
        .expect_err("forged payload");
    assert!(matches!(err, OidcError::InvalidSignature), "{err:?}");

    // alg none, with and without a signature.
    let none_header = b64(br#"{"alg":"none","kid":"es"}"#);
    let payload = b64(&serde_json::to_vec(&issuer.claims("builder")).expect("json"));
    for sig in ["", "c2ln"] {
        let err = verifier
            .verify(&format!("{none_header}.{payload}.{sig}"), &federations, now)
            .await
            .expect_err("alg none");
        assert!(matches!(err, OidcError::UnsupportedAlgorithm), "{err:?}");
    }

    // HS256, even when the issuer publishes the secret as an `oct` key, and HS256 keyed
    // with the public key's JWK text (key confusion).
    let secret = b"shared-secret";
    let mut jwks = issuer.served().jwks.clone();
    jwks["keys"]
        .as_array_mut()
        .expect("keys")
        .push(json!({"kty": "oct", "k": b64(secret), "kid": "hs"}));
    issuer.served().jwks = jwks;
    for key in [
        EncodingKey::from_secret(secret),
        EncodingKey::from_secret(es.jwk.to_string().as_bytes()),
    ] {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("hs".to_owned());
        let token = jsonwebtoken::encode(&header, &issuer.claims("builder"), &key).expect("sign");
        let err = verifier
            .verify(&token, &federations, now)
            .await
            .expect_err("HS256");
        assert!(matches!(err, OidcError::UnsupportedAlgorithm), "{err:?}");
    }

    for garbage in ["", "not-a-jwt", "a.b.c"] {
        let err = verifier
            .verify(garbage, &federations, now)
            .await
            .expect_err("garbage");
        assert!(matches!(err, OidcError::Malformed), "{err:?}");
    }
}

#[tokio::test]
async fn an_unknown_kid_refetches_once_per_interval() {
    let old = TestKey::es256("2024");
    let new = TestKey::es256("2025");
    let issuer = TestIssuer::start(&[&old]).await;
    let federations = [federation("ci", &issuer.url, AUDIENCE, &[])];
    let verifier = OidcVerifier::with_settings(quick());
    let now = SystemTime::now();

    verifier
        .verify(&old.sign(&issuer.claims("builder")), &federations, now)
        .await
        .expect("old key");
    assert_eq!(issuer.jwks_hits(), 1);

    // The issuer rotates; a token under the new key triggers one refetch and verifies.
    issuer.publish(&[&new]);
    verifier
        .verify(&new.sign(&issuer.claims("builder")), &federations, now)
        .await
        .expect("rotated key found by refetch");
    assert_eq!(issuer.jwks_hits(), 2);
    assert_eq!(issuer.discovery_hits(), 2);

    // Unknown kids within the interval get no further fetch.
    for kid in ["bogus-1", "bogus-2", "bogus-3"] {
        let stranger = TestKey::es256(kid);
        let err = verifier
            .verify(&stranger.sign(&issuer.claims("builder")), &federations, now)
            .await
            .expect_err("unknown kid");
        assert!(matches!(err, OidcError::UnknownKey), "{err:?}");
    }
    assert_eq!(
        issuer.jwks_hits(),
        2,
        "rate-limited: no refetch within the interval"
    );
    assert_eq!(verifier.fetcher.fetches.load(Ordering::SeqCst), 2);

    // The cached key keeps verifying without fetches.
    verifier
        .verify(&new.sign(&issuer.claims("builder")), &federations, now)
        .await
        .expect("cached key");
    assert_eq!(issuer.jwks_hits(), 2);
}

#[tokio::test]
async fn an_unknown_kid_on_the_first_fetch_does_not_fetch_twice() {
    let published = TestKey::es256("published");
    let stranger = TestKey::es256("stranger");
    let issuer = TestIssuer::start(&[&published]).await;
    let federations = [federation("ci", &issuer.url, AUDIENCE, &[])];
    let verifier = OidcVerifier::with_settings(quick());
    let err = verifier
        .verify(
            &stranger.sign(&issuer.claims("b")),
            &federations,
            SystemTime::now(),
        )
        .await
        .expect_err("unknown kid");
    assert!(matches!(err, OidcError::UnknownKey), "{err:?}");
    assert_eq!(issuer.jwks_hits(), 1);
}

#[tokio::test]
async fn claim_rules_select_federations() {
    let es = TestKey::es256("es");
    let issuer = TestIssuer::start(&[&es]).await;
    let verifier = OidcVerifier::with_settings(quick());
    let now = SystemTime::now();
    let mut claims = issuer.claims("project_path:acme/app:ref_type:branch:ref:main");
    claims["project_path"] = json!("acme/tools/app");
    claims["ref"] = json!("main");
    claims["project_id"] = json!(4711);
    claims["groups"] = json!(["dev", "release"]);
    let token = es.sign(&claims);

    let verify = |federations: Vec<FederationConfig>| {
        let verifier = &verifier;
        let token = token.clone();
        async move { verifier.verify(&token, &federations, now).await }
    };

    let exact = federation(
        "exact",
        &issuer.url,
        AUDIENCE,
        &[("project_path", &["acme/tools/app"]), ("ref", &["main"])],
    );
    let prefix = federation(
        "prefix",
        &issuer.url,
        AUDIENCE,
        &[("project_path", &["acme/*"])],
    );
    let number = federation(
        "number",
        &issuer.url,
        AUDIENCE,
        &[("project_id", &["4711"])],
    );
    let array = federation("array", &issuer.url, AUDIENCE, &[("groups", &["release"])]);
    for f in [exact, prefix, number, array] {
        let name = f.name.clone();
        let ids = verify(vec![f])
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(ids[0].name, name);
    }

    let wrong_ref = federation(
        "ref",
        &issuer.url,
        AUDIENCE,
        &[("project_path", &["acme/*"]), ("ref", &["release"])],
    );
    let wrong_prefix = federation(
        "p",
        &issuer.url,
        AUDIENCE,
        &[("project_path", &["acme/web/*"])],
    );
    let wrong_group = federation("g", &issuer.url, AUDIENCE, &[("groups", &["admin"])]);
    let missing = federation("m", &issuer.url, AUDIENCE, &[("environment", &["*"])]);
    for f in [wrong_ref, wrong_prefix, wrong_group, missing] {
        let name = f.name.clone();
        let err = verify(vec![f]).await.expect_err(&name);
        assert!(matches!(err, OidcError::ClaimsMismatch), "{name}: {err:?}");
        assert_eq!(err.to_string(), "token claims do not match any federation");
    }
}

#[tokio::test]
async fn only_matching_federations_of_an_issuer_are_returned() {
    let es = TestKey::es256("es");
    let issuer = TestIssuer::start(&[&es]).await;
    let verifier = OidcVerifier::with_settings(quick());
    let federations = [
        federation(
            "ci-builder",
            &issuer.url,
            AUDIENCE,
            &[("sub", &["builder"])],
        ),
        federation(
            "ci-deployer",
            &issuer.url,
            AUDIENCE,
            &[("sub", &["deployer"])],
        ),
        federation("other-audience", &issuer.url, "elsewhere", &[]),
        federation(
            "any-builder",
            &issuer.url,
            AUDIENCE,
            &[("sub", &["build*"])],
        ),
    ];
    let ids = verifier
        .verify(
            &es.sign(&issuer.claims("builder")),
            &federations,
            SystemTime::now(),
        )
        .await
        .expect("matches");
    let names: Vec<(usize, &str)> = ids
        .iter()
        .map(|i| (i.federation, i.name.as_str()))
        .collect();
    assert_eq!(names, vec![(0, "ci-builder"), (3, "any-builder")]);
    assert!(ids.iter().all(|i| i.subject == "builder"));
}

#[tokio::test]
async fn concurrent_verifications_share_one_fetch() {
    let es = TestKey::es256("es");
    let issuer = TestIssuer::start(&[&es]).await;
    let federations = [federation("ci", &issuer.url, AUDIENCE, &[])];
    let verifier = OidcVerifier::with_settings(quick());
    let token = es.sign(&issuer.claims("builder"));
    let results = futures_util::future::join_all(
        (0..16).map(|_| verifier.verify(&token, &federations, SystemTime::now())),
    )
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(issuer.discovery_hits(), 1);
    assert_eq!(issuer.jwks_hits(), 1);
}

#[tokio::test]
async fn an_unreachable_issuer_fails_fast_and_clearly() {
    let es = TestKey::es256("es");
    // A port that refuses connections: bound, then closed.
    let closed: SocketAddr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    // A server that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });

    let verifier = OidcVerifier::with_settings(quick());
    for addr in [closed, silent_addr] {
        let url = format!("http://{addr}");
        let federations = [federation("ci", &url, AUDIENCE, &[])];
        let claims = json!({"iss": url, "sub": "b", "aud": AUDIENCE,
            "exp": unix(SystemTime::now()) + 600});
        let token = es.sign(&claims);
        let started = Instant::now();
        let err = verifier
            .verify(&token, &federations, SystemTime::now())
            .await
            .expect_err("issuer down");
        assert!(
            matches!(err, OidcError::IssuerUnavailable { .. }),
            "{err:?}"
        );
        assert!(err.is_transient());
        assert_eq!(err.to_string(), "the token issuer could not be reached");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );

        // Within the backoff, the next attempt fails at once without a new fetch.
        let fetches = verifier.fetcher.fetches.load(Ordering::SeqCst);
        let started = Instant::now();
        let err = verifier
            .verify(&token, &federations, SystemTime::now())
            .await
            .expect_err("still down");
        assert!(
            matches!(err, OidcError::IssuerUnavailable { .. }),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(400));
        assert_eq!(verifier.fetcher.fetches.load(Ordering::SeqCst), fetches);
    }
    hold.abort();
}

#[tokio::test]
async fn stale_keys_are_used_while_the_issuer_is_down() {
    let es = TestKey::es256("es");
    let issuer = TestIssuer::start(&[&es]).await;
    let federations = [federation("ci", &issuer.url, AUDIENCE, &[])];
    let verifier = OidcVerifier::with_settings(OidcSettings {
        jwks_ttl: Duration::ZERO,
        ..quick()
    });
    let token = es.sign(&issuer.claims("builder"));
    verifier
        .verify(&token, &federations, SystemTime::now())
        .await
        .expect("fetched");
    issuer.served().down = true;
    verifier
        .verify(&token, &federations, SystemTime::now())
        .await
        .expect("the stale key set still verifies");
    assert_eq!(issuer.discovery_hits(), 2, "the refresh was attempted");
    assert_eq!(issuer.jwks_hits(), 1);
}

#[tokio::test]
async fn oversized_documents_are_refused() {
    let es = TestKey::es256("es");
    let issuer = TestIssuer::start(&[&es]).await;
    issuer.served().padding = 8 * 1024;
    let federations = [federation("ci", &issuer.url, AUDIENCE, &[])];
    let verifier = OidcVerifier::with_settings(OidcSettings {
        max_document_bytes: 4 * 1024,
        ..quick()
    });
    let err = verifier
        .verify(
            &es.sign(&issuer.claims("b")),
            &federations,
            SystemTime::now(),
        )
        .await
        .expect_err("too large");
    match &err {
        OidcError::IssuerUnavailable { detail, .. } => {
            assert!(detail.contains("larger than"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn federations_trusting_the_issuer_differently_are_verified_separately() {
    let es = TestKey::es256("es");
    let issuer = TestIssuer::start(&[&es]).await;
    let verifier = OidcVerifier::with_settings(quick());
    let broken_bundle = FederationConfig {
        ca_bundle: Some("no certificate here".to_owned()),
        ..federation("broken", &issuer.url, AUDIENCE, &[])
    };
    let plain = federation("plain", &issuer.url, AUDIENCE, &[("sub", &["builder"])]);
    let token = es.sign(&issuer.claims("builder"));

    let ids = verifier
        .verify(&token, &[broken_bundle.clone(), plain], SystemTime::now())
        .await
        .expect("the federation without a bundle matches");
    let names: Vec<&str> = ids.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec!["plain"]);

    let err = verifier
        .verify(
            &token,
            std::slice::from_ref(&broken_bundle),
            SystemTime::now(),
        )
        .await
        .expect_err("no usable trust");
    assert!(matches!(err, OidcError::CaBundle { .. }), "{err:?}");

    // Of several failures, the one that got furthest is reported.
    let mismatch = federation("mismatch", &issuer.url, AUDIENCE, &[("sub", &["deployer"])]);
    let err = verifier
        .verify(&token, &[broken_bundle, mismatch], SystemTime::now())
        .await
        .expect_err("no federation matches");
    assert!(matches!(err, OidcError::ClaimsMismatch), "{err:?}");
}

#[tokio::test]
async fn a_routine_refresh_does_not_hold_up_other_verifications() {
    let es = TestKey::es256("es");
    let issuer = TestIssuer::start(&[&es]).await;
    let federations = [federation("ci", &issuer.url, AUDIENCE, &[])];
    let verifier = OidcVerifier::with_settings(OidcSettings {
        jwks_ttl: Duration::ZERO,
        http_timeout: Duration::from_secs(5),
        ..OidcSettings::default()
    });
    let token = es.sign(&issuer.claims("builder"));
    verifier
        .verify(&token, &federations, SystemTime::now())
        .await
        .expect("first fetch");

    issuer.served().jwks_delay = Duration::from_secs(3);
    let refreshing = verifier.verify(&token, &federations, SystemTime::now());
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let result = verifier
            .verify(&token, &federations, SystemTime::now())
            .await;
        (result, started.elapsed())
    };
    let (refreshed, (result, waited)) = tokio::join!(refreshing, meanwhile);
    refreshed.expect("refreshed");
    result.expect("the old set serves during the refresh");
    assert!(waited < Duration::from_millis(1500), "{waited:?}");
    assert_eq!(issuer.jwks_hits(), 2);
}

#[test]
fn verification_futures_can_move_between_threads() {
    fn assert_send<T: Send>(_: &T) {}
    let verifier = OidcVerifier::new();
    assert_send(&verifier.verify("", &[], SystemTime::now()));
}
