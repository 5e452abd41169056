//! Fuzz targets: each takes arbitrary bytes, feeds them to one of the data plane's parsers of
//! untrusted input, and checks what must hold whatever the input (no panic, round trips,
//! bounds). The same functions run under `cargo fuzz` (`dataplane/fuzz/`, long runs) and as
//! bounded property tests in `tests/run` (`dataplane/tests/fuzz_targets.rs`), over the corpus
//! in `dataplane/fuzz/corpus/<target>/` and generated inputs.
//!
//! A failed check panics, which both runners report with the input. [`request`] drives the
//! whole HTTP API in-process, so a panic in any handler (answered 500 by the API's panic
//! layer) is a failure there too: no crash and no panic reaches a client.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use tower::ServiceExt;

use crate::auth::Transport;
use crate::auth::token::{KeySet, generate_key};
use crate::config::Config;
use crate::http::{AppState, build_app, headers};
use crate::live::{Applier, Source};
use crate::oci::{Digest, DigestAlgorithm, Hasher, Reference, RepoName, Tag};
use crate::registry::{ByteRange, parse_manifest};
use crate::storage::memory::MemoryStorage;
use crate::telemetry::ConfigMetrics;

/// A fuzz target: checks one input, panicking when something that must hold does not.
pub type Target = fn(&[u8]);

/// The targets, by name (the names of `dataplane/fuzz/fuzz_targets/*.rs` and of the corpus
/// folders).
pub const TARGETS: &[(&str, Target)] = &[
    ("names", names),
    ("digests", digests),
    ("ranges", ranges),
    ("authorization", authorization),
    ("jwts", jwts),
    ("manifests", manifests),
    ("config_document", config_document),
    ("request", request),
];

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Repository names, tags and references: whatever parses prints back to the same text and
/// parses again to the same value; a name has at most 255 bytes.
pub fn names(data: &[u8]) {
    let s = text(data);
    if let Ok(name) = s.parse::<RepoName>() {
        assert_eq!(name.to_string(), s);
        assert!(name.as_str().len() <= 255, "name longer than 255 bytes");
        assert!(!name.namespace().is_empty());
        assert_eq!(name.components().collect::<Vec<_>>().join("/"), s);
    }
    if let Ok(tag) = s.parse::<Tag>() {
        assert_eq!(tag.to_string(), s);
        assert!(tag.as_str().len() <= 128, "tag longer than 128 bytes");
    }
    if let Ok(reference) = s.parse::<Reference>() {
        assert_eq!(
            reference.to_string().parse::<Reference>().ok(),
            Some(reference)
        );
    }
    // `<name>:<tag>` and `<name>@<digest>`, as clients write them.
    if let Some((name, reference)) = s.rsplit_once(['@', ':']) {
        let _ = (name.parse::<RepoName>(), reference.parse::<Reference>());
    }
}

/// Digests: a parsed digest prints back unchanged, its hex has the algorithm's length, and
/// hashing state restored from arbitrary bytes never panics.
pub fn digests(data: &[u8]) {
    let s = text(data);
    if let Ok(digest) = s.parse::<Digest>() {
        assert_eq!(digest.to_string(), s);
        assert_eq!(digest.hex().len(), digest.algorithm().hex_len());
        assert_eq!(digest.to_string().parse::<Digest>().ok(), Some(digest));
    }
    for algorithm in [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512] {
        if let Some(mut hasher) = Hasher::resume(algorithm, data) {
            hasher.update(b"more");
            assert_eq!(hasher.digest().algorithm(), algorithm);
        }
        let digest = Digest::of(algorithm, data);
        assert_eq!(digest.to_string().parse::<Digest>().ok(), Some(digest));
    }
}

/// `Range` and upload `Content-Range` headers: a resolved range lies inside the object and is
/// not empty; an upload range has a positive length.
pub fn ranges(data: &[u8]) {
    // Input: `<object size>\n<header value>`.
    let input = text(data);
    let (size, value) = input.split_once('\n').unwrap_or(("0", &input));
    let size = size.trim().parse::<u64>().unwrap_or(0);
    if let Ok(header) = HeaderValue::from_str(value) {
        let mut map = HeaderMap::new();
        map.insert(axum::http::header::RANGE, header);
        if let Some(range) = headers::blob_range(&map) {
            check_range(range, size);
            check_range(range, 0);
            check_range(range, u64::MAX);
        }
    }
    if let Some((start, length)) = headers::upload_content_range(value) {
        assert!(length >= 1);
        assert!(start.checked_add(length - 1).is_some());
    }
}

fn check_range(range: ByteRange, size: u64) {
    if let Some(r) = range.resolve(size) {
        assert!(r.start < r.end, "{range:?} in {size}: empty {r:?}");
        assert!(
            r.end <= size,
            "{range:?} in {size}: {r:?} runs past the end"
        );
    }
}

/// `Authorization` values: Basic credentials decode to a user without `:`, and whatever the
/// value, the parser does not panic.
pub fn authorization(data: &[u8]) {
    let value = text(data);
    if let Some((user, _password)) = crate::http::auth::basic_credentials(&value) {
        assert!(!user.contains(':'));
    }
}

/// JWTs: OIDC tokens split and decode or are refused, never with a panic; the token service
/// refuses anything it did not sign (a forged or mangled token never verifies).
pub fn jwts(data: &[u8]) {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        KeySet::load(&Default::default(), &generate_key("fuzz")).expect("a generated key loads")
    });
    let token = text(data);
    if let Ok(parsed) = crate::auth::oidc::jwt::parse(&token) {
        assert!(parsed.signing_input.len() < token.len());
        assert!(!parsed.signature.is_empty());
    }
    assert!(
        keys.verify(&token, "fuzz").is_err(),
        "an arbitrary token verified"
    );
}

/// Manifests and indexes, with each content type a client may send: whatever is accepted
/// names only well-formed digests, and an index references manifests, not blobs.
pub fn manifests(data: &[u8]) {
    let content_types = [
        None,
        Some("application/vnd.oci.image.manifest.v1+json"),
        Some("application/vnd.oci.image.index.v1+json"),
        Some("application/vnd.docker.distribution.manifest.v2+json"),
        Some("application/vnd.docker.distribution.manifest.list.v2+json"),
        Some("application/json"),
    ];
    for content_type in content_types {
        if let Ok(parsed) = parse_manifest(content_type, data) {
            for digest in parsed.blobs.iter().chain(&parsed.manifests) {
                assert_eq!(
                    digest.to_string().parse::<Digest>().ok().as_ref(),
                    Some(digest)
                );
            }
            if parsed.kind.is_index() {
                assert!(parsed.blobs.is_empty(), "an index listed blobs");
            }
        }
    }
}

/// The configuration document: whatever parses and validates also goes through the apply
/// step of `serve` and `check-config` (keys loaded, rules compiled) without a panic.
pub fn config_document(data: &[u8]) {
    let Ok(config) = Config::from_yaml_str(&text(data)) else {
        return;
    };
    let auth = crate::auth::AuthService::new(Transport::default());
    let (applier, _live) = Applier::new(auth, config.settings.clone(), ConfigMetrics::default());
    let _ = applier.apply(Source::Check, crate::config::Loaded::stating_all(config));
}

/// A request, as fuzz input: the text of an HTTP/1.1 request without the version, so that
/// seeds are the requests tests send and mutations stay close to real ones:
///
/// ```text
/// [enforced]            optional first line: the app with access control
/// PUT /v2/acme/app/manifests/v1
/// content-type: application/vnd.oci.image.manifest.v1+json
///
/// {"schemaVersion":2,...}
/// ```
#[derive(Debug)]
struct FuzzRequest<'a> {
    enforced: bool,
    method: &'a [u8],
    target: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    body: &'a [u8],
}

impl<'a> FuzzRequest<'a> {
    fn parse(data: &'a [u8]) -> Option<Self> {
        let mut rest = data;
        let mut line = || {
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let (line, tail) = rest.split_at(end);
            rest = tail.get(1..).unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            std::str::from_utf8(line).ok()
        };
        let mut first = line()?;
        let enforced = first == "enforced";
        if enforced {
            first = line()?;
        }
        let (method, target) = first.split_once(' ')?;
        let mut headers = Vec::new();
        loop {
            let header = line()?;
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':')?;
            headers.push((name.trim(), value.trim()));
        }
        Some(Self {
            enforced,
            method: method.as_bytes(),
            target,
            headers,
            body: rest,
        })
    }
}

/// The process-wide state of the two apps (auth and the configuration in force); each request
/// gets fresh, empty storage, so inputs do not depend on each other.
fn apps() -> &'static [AppState; 2] {
    static APPS: OnceLock<[AppState; 2]> = OnceLock::new();
    APPS.get_or_init(|| {
        let state = |yaml: &str| {
            let config = Config::from_yaml_str(yaml).expect("the fuzzing document is valid");
            let registry = Arc::new(crate::registry::Registry::new(Arc::new(MemoryStorage::new())));
            AppState::with_config(registry, config, Transport::default())
                .expect("the fuzzing document applies")
        };
        let hash = cheap_hash("fuzz-secret");
        let enforced = format!(
            "apiVersion: registry.thalassa.cloud/v1alpha1\n\
             kind: DataPlaneConfig\n\
             region: fuzz\n\
             logins: {{perSource: {{failures: 1000000, per: 1s}}, \
                       perCredential: {{failures: 1000000, per: 1s}}}}\n\
             namespaces: [{{name: acme, visibility: private}}, {{name: open, visibility: public}}]\n\
             credentials:\n  \
               - {{id: ci, secretHash: \"{hash}\", scope: containerRegistry, namespaces: [acme]}}\n"
        );
        [
            state("apiVersion: registry.thalassa.cloud/v1alpha1\nkind: DataPlaneConfig\n"),
            state(&enforced),
        ]
    })
}

/// An argon2id hash with the smallest parameters (8 KiB, one pass): the data plane accepts
/// any argon2 PHC string, and inputs that name the credential with a wrong secret would
/// otherwise spend the run in argon2.
fn cheap_hash(secret: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(8, 1, 1, None).expect("valid argon2 parameters");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(
            secret.as_bytes(),
            &SaltString::from_b64("ZnV6ei1zYWx0").expect("a salt"),
        )
        .expect("hashing works")
        .to_string()
}

/// The runtime requests run on (current thread: the fuzzer's thread).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// A whole request through the API (router, authentication, handlers, registry, in-memory
/// storage): the answer is never a 500, so no input makes a handler panic or fail
/// internally, and every `/v2/` error carries an OCI error body.
pub fn request(data: &[u8]) {
    let Some(input) = FuzzRequest::parse(data) else {
        return;
    };
    let Ok(method) = Method::from_bytes(input.method) else {
        return;
    };
    let Ok(mut request) = Request::builder()
        .method(method)
        .uri(input.target)
        .body(Body::from(input.body.to_vec()))
    else {
        return;
    };
    for (name, value) in &input.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(*name), HeaderValue::from_str(value)) {
            request.headers_mut().append(name, value);
        }
    }
    let shared = &apps()[usize::from(input.enforced)];
    let registry = Arc::new(crate::registry::Registry::new(Arc::new(
        MemoryStorage::new(),
    )));
    let state = AppState::new(registry, Arc::clone(shared.auth()), shared.live().clone());
    let path = request.uri().path().to_owned();
    let (status, body) = runtime().block_on(async move {
        let response = build_app(state)
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        (status, body)
    });
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{path}: {}",
        String::from_utf8_lossy(&body)
    );
    if path.starts_with("/v2/") && status.is_client_error() && !body.is_empty() {
        let json: serde_json::Value =
            serde_json::from_slice(&body).expect("a /v2/ error body is JSON");
        assert!(json["errors"][0]["code"].is_string(), "{path}: {json}");
    }
}
