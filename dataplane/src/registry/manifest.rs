//! Manifests: validation on push, storage by digest, tags, referrers, reads and deletes.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use super::metering::Direction;
use serde_json::{Map, Value};

use super::{Registry, RegistryError, Result};
use crate::config::tag_pattern_matches;
use crate::oci::{Digest, DigestAlgorithm, Reference, RepoName, Tag};
use crate::storage::{ManifestMeta, PullTarget, StorageError};

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// Media type of the OCI empty descriptor (`{}`), used as the config of artifacts.
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The bytes of the OCI empty descriptor.
const EMPTY_CONTENT: &[u8] = b"{}";

/// The manifest formats this registry accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// OCI image manifest (also artifact manifests: `artifactType` and/or `subject`).
    OciManifest,
    /// OCI image index.
    OciIndex,
    /// Docker image manifest, schema 2.
    DockerManifest,
    /// Docker manifest list.
    DockerManifestList,
}

impl ManifestKind {
    /// Every supported kind.
    pub const ALL: [Self; 4] = [
        Self::OciManifest,
        Self::OciIndex,
        Self::DockerManifest,
        Self::DockerManifestList,
    ];

    /// The kind's media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::OciManifest => "application/vnd.oci.image.manifest.v1+json",
            Self::OciIndex => "application/vnd.oci.image.index.v1+json",
            Self::DockerManifest => "application/vnd.docker.distribution.manifest.v2+json",
            Self::DockerManifestList => "application/vnd.docker.distribution.manifest.list.v2+json",
        }
    }

    /// The kind with this media type.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.media_type() == media_type)
    }

    /// Whether this kind lists other manifests (index, manifest list).
    pub fn is_index(self) -> bool {
        matches!(self, Self::OciIndex | Self::DockerManifestList)
    }
}

/// A validated manifest: what the registry needs to know to store it.
#[derive(Debug, Clone)]
pub struct ParsedManifest {
    /// Its kind.
    pub kind: ManifestKind,
    /// Blobs it references that must be linked in the repository (config and layers, except
    /// foreign layers that carry `urls`).
    pub blobs: Vec<Digest>,
    /// The sizes the manifest declares for `blobs`, in the same order.
    pub blob_sizes: Vec<u64>,
    /// Foreign layers (with `urls`): not required, but kept by garbage collection when a
    /// client pushed them anyway.
    pub foreign_blobs: Vec<Digest>,
    /// Manifests it references that must exist in the repository (index entries).
    pub manifests: Vec<Digest>,
    /// Whether the config is the OCI empty descriptor (whose content the registry knows).
    pub empty_config: Option<Digest>,
    /// The manifest this one refers to (`subject`).
    pub subject: Option<Digest>,
    /// The artifact type reported by the referrers API: `artifactType`, else the config's
    /// media type for image manifests.
    pub artifact_type: Option<String>,
    /// The manifest's annotations.
    pub annotations: Option<Map<String, Value>>,
}

fn immutable(tag: &Tag, pattern: &str) -> RegistryError {
    RegistryError::TagImmutable {
        tag: tag.to_string(),
        pattern: pattern.to_owned(),
    }
}

fn invalid(msg: impl Into<String>) -> RegistryError {
    RegistryError::ManifestInvalid(msg.into())
}

/// Strips parameters (`; charset=...`) and whitespace from a media type.
fn essence(media_type: &str) -> &str {
    media_type.split(';').next().unwrap_or_default().trim()
}

const UNSUPPORTED_TYPES: [&str; 3] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.oci.artifact.manifest.v1+json",
];

/// Decides a manifest's kind from its `Content-Type` and the body's `mediaType` field.
fn manifest_kind(content_type: Option<&str>, doc: &Map<String, Value>) -> Result<ManifestKind> {
    let body_type = match doc.get("mediaType") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(invalid("mediaType must be a string")),
    };
    let declared = content_type.map(essence).filter(|ct| {
        !ct.is_empty() && *ct != "application/json" && *ct != "application/octet-stream"
    });
    if let Some(ct) = declared {
        if UNSUPPORTED_TYPES.contains(&ct) {
            return Err(invalid(format!(
                "manifest media type {ct} is not supported"
            )));
        }
        let kind = ManifestKind::from_media_type(ct)
            .ok_or_else(|| invalid(format!("{ct} is not a supported manifest media type")))?;
        if let Some(bt) = body_type
            && bt != ct
        {
            return Err(invalid(format!(
                "mediaType {bt} in the body does not match Content-Type {ct}"
            )));
        }
        return Ok(kind);
    }
    if let Some(bt) = body_type {
        return ManifestKind::from_media_type(bt)
            .ok_or_else(|| invalid(format!("{bt} is not a supported manifest media type")));
    }
    if doc.contains_key("manifests") {
        Ok(ManifestKind::OciIndex)
    } else if doc.contains_key("config") {
        Ok(ManifestKind::OciManifest)
    } else {
        Err(invalid(
            "cannot tell the manifest type: no Content-Type or mediaType",
        ))
    }
}

fn descriptor_digest(d: &Descriptor, field: &str) -> Result<Digest> {
    if d.media_type().to_string().is_empty() {
        return Err(invalid(format!("{field}: mediaType must not be empty")));
    }
    d.digest()
        .to_string()
        .parse()
        .map_err(|e| invalid(format!("{field}: {e}")))
}

/// Validates a manifest's bytes against its declared `Content-Type`: JSON, `schemaVersion: 2`,
/// a supported media type consistent with the body, well-formed descriptors. Unknown fields are
/// accepted. Pure: does not look at storage.
pub fn parse_manifest(content_type: Option<&str>, body: &[u8]) -> Result<ParsedManifest> {
    if body.len() > MAX_MANIFEST_SIZE {
        return Err(RegistryError::ManifestTooLarge {
            limit: MAX_MANIFEST_SIZE,
        });
    }
    let doc: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not a JSON object: {e}")))?;
    match doc.get("schemaVersion") {
        Some(v) if v.as_u64() == Some(2) => {}
        Some(v) if v.as_u64() == Some(1) => {
            return Err(invalid("schema 1 manifests are not supported"));
        }
        _ => return Err(invalid("schemaVersion must be 2")),
    }
    let kind = manifest_kind(content_type, &doc)?;
    let annotations = match doc.get("annotations") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => return Err(invalid("annotations must be an object")),
    };
    let doc = Value::Object(doc);
    if kind.is_index() {
        let index: ImageIndex =
            serde_json::from_value(doc).map_err(|e| invalid(format!("invalid index: {e}")))?;
        let manifests = index
            .manifests()
            .iter()
            .enumerate()
            .map(|(i, d)| descriptor_digest(d, &format!("manifests[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        let subject = index
            .subject()
            .as_ref()
            .map(|d| descriptor_digest(d, "subject"))
            .transpose()?;
        Ok(ParsedManifest {
            kind,
            blobs: Vec::new(),
            blob_sizes: Vec::new(),
            foreign_blobs: Vec::new(),
            manifests,
            empty_config: None,
            subject,
            artifact_type: index.artifact_type().as_ref().map(ToString::to_string),
            annotations,
        })
    } else {
        let manifest: ImageManifest =
            serde_json::from_value(doc).map_err(|e| invalid(format!("invalid manifest: {e}")))?;
        let config = manifest.config();
        let config_digest = descriptor_digest(config, "config")?;
        let empty_config = (config.media_type().to_string() == EMPTY_MEDIA_TYPE
            && config_digest == Digest::of(config_digest.algorithm(), EMPTY_CONTENT))
        .then(|| config_digest.clone());
        let mut blobs = vec![config_digest];
        let mut blob_sizes = vec![config.size()];
        let mut foreign_blobs = Vec::new();
        for (i, layer) in manifest.layers().iter().enumerate() {
            let digest = descriptor_digest(layer, &format!("layers[{i}]"))?;
            let foreign = layer.urls().as_ref().is_some_and(|u| !u.is_empty());
            if foreign {
                foreign_blobs.push(digest);
            } else {
                blobs.push(digest);
                blob_sizes.push(layer.size());
            }
        }
        let subject = manifest
            .subject()
            .as_ref()
            .map(|d| descriptor_digest(d, "subject"))
            .transpose()?;
        let artifact_type = manifest
            .artifact_type()
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| Some(config.media_type().to_string()));
        Ok(ParsedManifest {
            kind,
            blobs,
            blob_sizes,
            foreign_blobs,
            manifests: Vec::new(),
            empty_config,
            subject,
            artifact_type,
            annotations,
        })
    }
}

/// Where a pushed manifest goes: the digest it must have (pushed by digest, or by tag with a
/// `digest` parameter) and the tags to point at it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutTarget {
    /// The digest the content must hash to; `None`: its SHA-256 digest.
    pub digest: Option<Digest>,
    /// Tags to point at the manifest.
    pub tags: Vec<Tag>,
    /// Immutable tag patterns of the repository's namespace (`*` any run, `?` one character):
    /// a matching tag may be created, or pushed again with the digest it has, but never moved.
    pub immutable_tags: Vec<String>,
}

impl PutTarget {
    /// The first immutable pattern `tag` matches.
    fn immutable_pattern(&self, tag: &Tag) -> Option<&str> {
        self.immutable_tags
            .iter()
            .find(|pattern| tag_pattern_matches(pattern, tag.as_str()))
            .map(String::as_str)
    }
}

impl PutTarget {
    /// The target of `PUT /v2/<name>/manifests/<reference>` without parameters.
    pub fn from_reference(reference: &Reference) -> Self {
        match reference {
            Reference::Digest(d) => Self {
                digest: Some(d.clone()),
                ..Self::default()
            },
            Reference::Tag(t) => Self {
                tags: vec![t.clone()],
                ..Self::default()
            },
        }
    }
}

/// Estimated memory of one cache entry besides its bytes (the digest key, the map slot).
const MANIFEST_ENTRY_OVERHEAD: usize = 160;

/// Recently served manifest bytes by digest. Content-addressed bytes never change, so entries
/// cannot go stale; whether a repository may see a manifest is still decided by its link in
/// storage on every request. Read-mostly: lookups share a read lock. Holds at most its
/// capacity in bytes (content plus [`MANIFEST_ENTRY_OVERHEAD`] per entry), and starts over
/// when full.
#[derive(Debug)]
pub(super) struct ManifestCache {
    inner: RwLock<CacheInner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct CacheInner {
    entries: HashMap<Digest, Bytes>,
    bytes: usize,
}

impl ManifestCache {
    /// A cache of at most `capacity` bytes (zero keeps nothing).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            inner: RwLock::default(),
            capacity,
        }
    }

    fn get(&self, digest: &Digest) -> Option<Bytes> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .get(digest)
            .cloned()
    }

    fn insert(&self, digest: &Digest, bytes: &Bytes) {
        let weight = bytes.len() + MANIFEST_ENTRY_OVERHEAD;
        if weight > self.capacity / 16 || self.get(digest).is_some() {
            return;
        }
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if inner.bytes + weight > self.capacity {
            inner.entries.clear();
            inner.bytes = 0;
        }
        if inner
            .entries
            .insert(digest.clone(), bytes.clone())
            .is_none()
        {
            inner.bytes += weight;
        }
    }
}

/// Result of a manifest push.
#[derive(Debug, Clone)]
pub struct ManifestPut {
    /// The manifest's digest.
    pub digest: Digest,
    /// Its `subject`, when it has one (answered as `OCI-Subject`).
    pub subject: Option<Digest>,
}

/// A manifest as served.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its digest.
    pub digest: Digest,
    /// The media type it was pushed with.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its bytes, unchanged (`None` when only the metadata was asked for).
    pub body: Option<Bytes>,
}

impl Registry {
    /// Validates and stores a manifest in `repo`, then points `target`'s tags at it and records
    /// it as a referrer of its subject. With `target.digest`, the content must hash to it (with
    /// its algorithm); otherwise the manifest is addressed by its SHA-256 digest.
    ///
    /// A tag matching one of `target.immutable_tags` that points at another manifest is not
    /// moved ([`RegistryError::TagImmutable`]): checked before anything is stored, and again
    /// when the tag is written, by a create-only write that a
    /// concurrent push cannot slip past
    /// ([`crate::storage::Storage::tag_create`]).
    pub async fn manifest_put(
        &self,
        repo: &RepoName,
        target: &PutTarget,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<ManifestPut> {
        let parsed = parse_manifest(content_type, &body)?;
        self.transfers
            .count(repo, Direction::Push, body.len() as u64);
        let digest = match &target.digest {
            Some(declared) => {
                let computed = Digest::of(declared.algorithm(), &body);
                if computed != *declared {
                    return Err(RegistryError::DigestMismatch {
                        declared: declared.clone(),
                        computed,
                    });
                }
                computed
            }
            None => Digest::of(DigestAlgorithm::Sha256, &body),
        };
        for tag in &target.tags {
            if let Some(pattern) = target.immutable_pattern(tag)
                && let Some(current) = self.storage.tag_get(repo, tag).await?
                && current != digest
            {
                return Err(immutable(tag, pattern));
            }
        }
        for blob in &parsed.blobs {
            if self.storage.blob_linked(repo, blob).await? {
                continue;
            }
            if parsed.empty_config.as_ref() == Some(blob) {
                // The empty descriptor's content is known: provide it rather than refuse.
                self.storage
                    .blob_put(blob, Bytes::from_static(EMPTY_CONTENT))
                    .await?;
                self.storage.link_blob(repo, blob).await?;
                continue;
            }
            return Err(RegistryError::ManifestBlobUnknown(blob.clone()));
        }
        for child in &parsed.manifests {
            if self.storage.manifest_meta(repo, child).await?.is_none() {
                return Err(RegistryError::ManifestBlobUnknown(child.clone()));
            }
        }
        // Touch what the manifest names before it becomes visible (see `gc`): a blob that a
        // collection removed meanwhile is refused here rather than acknowledged missing.
        let named = parsed.blobs.iter().chain(&parsed.manifests);
        if let Some(gone) = self.touch_all(named).await? {
            return Err(RegistryError::ManifestBlobUnknown(gone));
        }
        let meta = ManifestMeta {
            media_type: content_type
                .map(essence)
                .filter(|ct| ManifestKind::from_media_type(ct).is_some())
                .unwrap_or(parsed.kind.media_type())
                .to_owned(),
            size: body.len() as u64,
        };
        let media_type = meta.media_type.clone();
        self.storage.blob_put(&digest, body.clone()).await?;
        if !self.storage.blob_touch(&digest).await? {
            // An identical manifest's bytes, unreferenced for the grace period, were collected
            // between the write (which kept them) and the touch: write them again.
            self.storage.blob_put(&digest, body.clone()).await?;
            if !self.storage.blob_touch(&digest).await? {
                return Err(RegistryError::Storage(StorageError::Unavailable(
                    "the manifest's bytes were removed while being stored; push again".into(),
                )));
            }
        }
        self.manifests.insert(&digest, &body);
        self.storage.manifest_link(repo, &digest, &meta).await?;
        if let Some(subject) = &parsed.subject {
            let mut descriptor = Map::new();
            descriptor.insert("mediaType".into(), media_type.into());
            descriptor.insert("digest".into(), digest.to_string().into());
            descriptor.insert("size".into(), meta.size.into());
            if let Some(t) = &parsed.artifact_type {
                descriptor.insert("artifactType".into(), t.clone().into());
            }
            if let Some(a) = &parsed.annotations {
                descriptor.insert("annotations".into(), Value::Object(a.clone()));
            }
            let json = serde_json::to_vec(&descriptor).map_err(|e| {
                RegistryError::Storage(StorageError::Backend(format!(
                    "cannot encode a referrer descriptor: {e}"
                )))
            })?;
            self.storage
                .referrer_add(repo, subject, &digest, Bytes::from(json))
                .await?;
        }
        for tag in &target.tags {
            match target.immutable_pattern(tag) {
                None => self.storage.tag_set(repo, tag, &digest).await?,
                Some(pattern) => match self.storage.tag_create(repo, tag, &digest).await? {
                    Some(current) if current != digest => return Err(immutable(tag, pattern)),
                    _ => {}
                },
            }
        }
        Ok(ManifestPut {
            digest,
            subject: parsed.subject,
        })
    }

    /// Resolves a reference in `repo` to a manifest digest and its record.
    async fn manifest_resolve(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(Digest, ManifestMeta)> {
        let resolved = match reference {
            Reference::Digest(d) => self
                .storage
                .manifest_meta(repo, d)
                .await?
                .map(|meta| (d.clone(), meta)),
            Reference::Tag(t) => self.storage.tag_manifest(repo, t).await?,
        };
        resolved.ok_or(RegistryError::ManifestUnknown)
    }

    /// Reads a manifest's bytes (known to be stored), from the cache when it holds them.
    pub(super) async fn manifest_bytes(&self, digest: &Digest, size: u64) -> Result<Bytes> {
        if let Some(bytes) = self.manifests.get(digest) {
            return Ok(bytes);
        }
        let mut stream = self
            .storage
            .blob_read(digest, None)
            .await
            .map_err(|e| match e {
                StorageError::NotFound => RegistryError::ManifestUnknown,
                other => RegistryError::Storage(other),
            })?;
        let capacity = usize::try_from(size).unwrap_or(0).min(MAX_MANIFEST_SIZE);
        let mut buf = BytesMut::with_capacity(capacity);
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk.map_err(StorageError::Io)?);
        }
        let bytes = buf.freeze();
        self.manifests.insert(digest, &bytes);
        Ok(bytes)
    }

    /// A manifest of `repo` by tag or digest; with its bytes when `with_body`.
    pub async fn manifest_get(
        &self,
        repo: &RepoName,
        reference: &Reference,
        with_body: bool,
    ) -> Result<Manifest> {
        let (digest, meta) = self.manifest_resolve(repo, reference).await?;
        let by_tag = match reference {
            Reference::Tag(tag) => Some(PullTarget::Tag(tag.clone())),
            Reference::Digest(_) => None,
        };
        self.pulls.note(
            &self.storage,
            repo,
            by_tag
                .into_iter()
                .chain([PullTarget::Manifest(digest.clone())]),
        );
        let body = if with_body {
            let body = self.manifest_bytes(&digest, meta.size).await?;
            self.transfers
                .count(repo, Direction::Pull, body.len() as u64);
            Some(body)
        } else {
            None
        };
        Ok(Manifest {
            digest,
            media_type: meta.media_type,
            size: meta.size,
            body,
        })
    }

    /// What a stored manifest revision of `repo` references (its blobs, the manifests of an
    /// index, its subject), read without counting as a pull; `None` when `repo` has no such
    /// revision. For retention and garbage collection.
    pub async fn manifest_references(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ParsedManifest>> {
        let Some(meta) = self.storage.manifest_meta(repo, digest).await? else {
            return Ok(None);
        };
        let bytes = self.manifest_bytes(digest, meta.size).await?;
        parse_manifest(Some(&meta.media_type), &bytes).map(Some)
    }

    /// Removes a manifest revision of `repo` and its referrer record, only if no tag points at
    /// it (retention: a tag set since the plan keeps it). Returns whether it was removed.
    pub async fn manifest_remove_untagged(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        if !self.storage.tags_of(repo, digest).await?.is_empty() {
            return Ok(false);
        }
        match self.manifest_references(repo, digest).await {
            Ok(None) => return Ok(false),
            Ok(Some(parsed)) => {
                if let Some(subject) = parsed.subject {
                    self.storage.referrer_remove(repo, &subject, digest).await?;
                }
            }
            // Bytes that cannot be read or parsed record no referrer to remove.
            Err(RegistryError::Storage(e)) => return Err(e.into()),
            Err(_) => {}
        }
        Ok(self.storage.manifest_unlink(repo, digest).await?)
    }

    /// Deletes a tag (by tag), or a manifest revision with every tag pointing at it and its
    /// referrer record (by digest).
    pub async fn manifest_delete(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        let digest = match reference {
            Reference::Tag(tag) => {
                return if self.storage.tag_delete(repo, tag).await? {
                    Ok(())
                } else {
                    Err(RegistryError::ManifestUnknown)
                };
            }
            Reference::Digest(d) => d,
        };
        let meta = self
            .storage
            .manifest_meta(repo, digest)
            .await?
            .ok_or(RegistryError::ManifestUnknown)?;
        let subject = match self.manifest_bytes(digest, meta.size).await {
            Ok(bytes) => parse_manifest(Some(&meta.media_type), &bytes)
                .ok()
                .and_then(|p| p.subject),
            Err(RegistryError::ManifestUnknown) => None,
            Err(e) => return Err(e),
        };
        for tag in self.storage.tags_of(repo, digest).await? {
            self.storage.tag_delete(repo, &tag).await?;
        }
        if let Some(subject) = subject {
            self.storage.referrer_remove(repo, &subject, digest).await?;
        }
        if self.storage.manifest_unlink(repo, digest).await? {
            Ok(())
        } else {
            Err(RegistryError::ManifestUnknown)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

    fn manifest(extra: &str) -> String {
        let d = Digest::sha256_of(b"x");
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":1}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":1}}]{extra}}}"#
        )
    }

    #[test]
    fn accepts_an_image_manifest_with_unknown_fields() {
        let p = parse_manifest(Some(OCI), manifest(r#","futureField":1"#).as_bytes()).unwrap();
        assert_eq!(p.kind, ManifestKind::OciManifest);
        assert_eq!(p.blobs.len(), 2);
        assert!(p.subject.is_none());
    }

    #[test]
    fn kind_comes_from_body_when_content_type_is_generic() {
        let p = parse_manifest(None, manifest("").as_bytes()).unwrap();
        assert_eq!(p.kind, ManifestKind::OciManifest);
        let p = parse_manifest(
            Some("application/json"),
            br#"{"schemaVersion":2,"manifests":[]}"#,
        )
        .unwrap();
        assert_eq!(p.kind, ManifestKind::OciIndex);
    }

    #[test]
    fn rejects_inconsistent_or_malformed_manifests() {
        let cases: Vec<(Option<&str>, String)> = vec![
            (Some(OCI), "{not json".into()),
            (Some(OCI), "[]".into()),
            (Some(OCI), manifest("").replace("\"schemaVersion\":2", "\"schemaVersion\":3")),
            (
                Some("application/vnd.oci.image.index.v1+json"),
                manifest(""),
            ),
            (Some("text/plain"), manifest("")),
            (
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
                r#"{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[]}"#.into(),
            ),
            (Some(OCI), manifest("").replace(r#""size":1}]"#, r#""size":-1}]"#)),
            (Some(OCI), manifest("").replace("sha256:", "sha256:zz")),
            (
                Some(OCI),
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#
                    .into(),
            ),
        ];
        for (ct, body) in cases {
            assert!(
                matches!(
                    parse_manifest(ct, body.as_bytes()),
                    Err(RegistryError::ManifestInvalid(_))
                ),
                "{ct:?} {body}"
            );
        }
    }

    #[test]
    fn foreign_layers_are_not_required() {
        let body = manifest("").replace(
            r#""size":1}]"#,
            r#""size":1,"urls":["https://example.invalid/l"]}]"#,
        );
        let p = parse_manifest(Some(OCI), body.as_bytes()).unwrap();
        assert_eq!(p.blobs.len(), 1);
    }

    #[test]
    fn artifact_type_falls_back_to_config_media_type() {
        let p = parse_manifest(Some(OCI), manifest("").as_bytes()).unwrap();
        assert_eq!(
            p.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        let p = parse_manifest(
            Some(OCI),
            manifest(r#","artifactType":"application/x-sbom""#).as_bytes(),
        )
        .unwrap();
        assert_eq!(p.artifact_type.as_deref(), Some("application/x-sbom"));
    }

    #[test]
    fn manifest_cache_stays_within_its_budget() {
        const CAPACITY: usize = 1024 * 1024;
        let cache = ManifestCache::new(CAPACITY);
        let small = Bytes::from_static(b"{}");
        let d = Digest::sha256_of(&small);
        assert!(cache.get(&d).is_none());
        cache.insert(&d, &small);
        assert_eq!(cache.get(&d), Some(small));
        // Entries too large for the cache are not kept.
        let big = Bytes::from(vec![b'x'; CAPACITY / 8]);
        let big_digest = Digest::sha256_of(&big);
        cache.insert(&big_digest, &big);
        assert!(cache.get(&big_digest).is_none());
        // Filling past the budget starts over instead of growing, counting each entry's
        // overhead: 10,000 small manifests of 200 bytes never hold more than the capacity.
        for i in 0..10_000u32 {
            let b = Bytes::from(format!("{i:0>200}"));
            cache.insert(&Digest::sha256_of(&b), &b);
            let inner = cache.inner.read().unwrap();
            let held: usize = inner
                .entries
                .values()
                .map(|b| b.len() + MANIFEST_ENTRY_OVERHEAD)
                .sum();
            assert_eq!(held, inner.bytes);
            assert!(held <= CAPACITY, "{held} bytes held");
        }
        assert!(!cache.inner.read().unwrap().entries.is_empty());
    }

    #[test]
    fn manifest_cache_of_zero_bytes_keeps_nothing() {
        let cache = ManifestCache::new(0);
        let small = Bytes::from_static(b"{}");
        let d = Digest::sha256_of(&small);
        cache.insert(&d, &small);
        assert!(cache.get(&d).is_none());
    }
}
