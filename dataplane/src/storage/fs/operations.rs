//! The [`Storage`] operations of [`FsStorage`].

use std::collections::BinaryHeap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::layout::{for_each_dir_entry, read_dir_names};
use super::publish::{TempPath, sync_dir};
use super::reads::{Opened, check_range, file_stream, parse_digest_parts};
use super::uploads::Append;
use super::walk::walk_repositories;
use super::{
    BLOBS_DIR, FsStorage, Inner, LAYERS_DIR, MANIFESTS_DIR, PULLED_MANIFESTS, PULLED_TAGS,
    READ_CHUNK, REPOSITORIES_DIR, TAGS_DIR, UPLOAD_DATA, UPLOAD_INFO, not_found,
};
use crate::oci::{Digest, RepoName, Tag};
use crate::storage::{
    ByteStream, ManifestMeta, ManifestRecord, PullTarget, RecordKey, Result, Storage, StorageError,
    StoredBlob, TagRecord, UploadId, UploadInfo, VersionedRecord,
};

#[async_trait::async_trait]
impl Storage for FsStorage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let digest = digest.clone();
        self.run(move |inner| match fs::metadata(inner.blob_path(&digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await
    }

    async fn blob_read(&self, digest: &Digest, range: Option<Range<u64>>) -> Result<ByteStream> {
        let digest = digest.clone();
        let opened = self
            .run(move |inner| {
                let file = File::open(inner.blob_path(&digest)).map_err(not_found)?;
                let size = file.metadata()?.len();
                let (start, len) = check_range(range, size)?;
                if len <= READ_CHUNK as u64 {
                    let mut buf = BytesMut::zeroed(len as usize);
                    file.read_exact_at(&mut buf, start)?;
                    Ok(Opened::Small(buf.freeze()))
                } else {
                    Ok(Opened::Large(file, start, len))
                }
            })
            .await?;
        Ok(match opened {
            Opened::Small(data) if data.is_empty() => Box::pin(futures_util::stream::empty()),
            Opened::Small(data) => Box::pin(futures_util::stream::once(async move { Ok(data) })),
            Opened::Large(file, start, len) => {
                file_stream(file, start, len, Arc::clone(&self.inner.reads))
            }
        })
    }

    async fn blob_put(&self, digest: &Digest, data: Bytes) -> Result<()> {
        let digest = digest.clone();
        self.run(move |inner| {
            if fs::symlink_metadata(inner.blob_path(&digest)).is_ok() {
                return Ok(());
            }
            let tmp = inner.write_temp(&data)?;
            inner.publish_blob(&tmp.path, &digest)?;
            Ok(())
        })
        .await
    }

    async fn blob_delete(&self, digest: &Digest) -> Result<()> {
        let digest = digest.clone();
        self.run(move |inner| {
            inner.remove_record(&inner.blob_path(&digest))?;
            Ok(())
        })
        .await
    }

    async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let (repo, digest) = (repo.clone(), digest.clone());
        self.run(move |inner| {
            let path = inner.repo_digest_path(&repo, LAYERS_DIR, &digest);
            if fs::symlink_metadata(&path).is_ok() {
                return Ok(());
            }
            inner.write_record(&path, digest.to_string().as_bytes())?;
            Ok(())
        })
        .await
    }

    async fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let (repo, digest) = (repo.clone(), digest.clone());
        self.run(move |inner| {
            let path = inner.repo_digest_path(&repo, LAYERS_DIR, &digest);
            match fs::symlink_metadata(&path) {
                Ok(m) => Ok(m.is_file()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let (repo, digest) = (repo.clone(), digest.clone());
        self.run(move |inner| {
            Ok(inner.remove_record(&inner.repo_digest_path(&repo, LAYERS_DIR, &digest))?)
        })
        .await
    }

    async fn blob_links(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        let repo = repo.clone();
        self.run(move |inner| {
            let dir = inner.repo_dir(&repo).join(LAYERS_DIR);
            let mut links = Vec::new();
            for (alg, kind) in read_dir_names(&dir)? {
                if !kind.is_dir() {
                    continue;
                }
                for (hex, kind) in read_dir_names(&dir.join(&alg))? {
                    if let Some(digest) = parse_digest_parts(&alg, &hex).filter(|_| kind.is_file())
                    {
                        links.push(digest);
                    }
                }
            }
            links.sort();
            Ok(links)
        })
        .await
    }

    async fn blobs(&self) -> Result<Vec<StoredBlob>> {
        self.run(move |inner| {
            let root = inner.root.join(BLOBS_DIR);
            let mut blobs = Vec::new();
            for (alg, kind) in read_dir_names(&root)? {
                if !kind.is_dir() {
                    continue;
                }
                for (fanout, kind) in read_dir_names(&root.join(&alg))? {
                    if !kind.is_dir() {
                        continue;
                    }
                    let dir = root.join(&alg).join(&fanout);
                    for (hex, kind) in read_dir_names(&dir)? {
                        let Some(digest) = parse_digest_parts(&alg, &hex)
                            .filter(|d| kind.is_file() && d.hex().starts_with(fanout.as_str()))
                        else {
                            continue;
                        };
                        match fs::metadata(dir.join(&hex)) {
                            Ok(m) => blobs.push(StoredBlob {
                                digest,
                                size: m.len(),
                                touched: m.modified()?,
                            }),
                            // Removed since the directory was read.
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
            blobs.sort();
            Ok(blobs)
        })
        .await
    }

    async fn blob_touch(&self, digest: &Digest) -> Result<bool> {
        let digest = digest.clone();
        self.run(move |inner| Ok(inner.touch_blob(&digest)?)).await
    }

    async fn blob_collect(&self, digest: &Digest, cutoff: SystemTime) -> Result<Option<u64>> {
        let digest = digest.clone();
        self.run(move |inner| Ok(inner.collect_blob(&digest, cutoff)?))
            .await
    }

    async fn blob_collect_recover(&self) -> Result<usize> {
        self.run(|inner| Ok(inner.recover_trash()?)).await
    }

    async fn upload_create(&self, repo: &RepoName) -> Result<UploadInfo> {
        let info = UploadInfo {
            id: UploadId::generate(),
            repository: repo.to_string(),
            size: 0,
            started_at: SystemTime::now(),
            checkpoint: None,
        };
        let record = serde_json::to_vec(&info)
            .map_err(|e| StorageError::Backend(format!("cannot encode an upload record: {e}")))?;
        let id = info.id.clone();
        self.run(move |inner| {
            // Assemble the session in the temporary area, then move it into place whole.
            let staging = TempPath::new(inner.tmp.next_path());
            fs::create_dir(&staging.path)?;
            File::create_new(staging.path.join(UPLOAD_DATA))?.sync_all()?;
            let mut file = File::create_new(staging.path.join(UPLOAD_INFO))?;
            file.write_all(&record)?;
            file.sync_all()?;
            sync_dir(&staging.path)?;
            let uploads = inner.uploads_dir();
            inner.ensure_dir(&uploads)?;
            fs::rename(&staging.path, inner.upload_dir(&id))?;
            staging.keep();
            sync_dir(&uploads)?;
            Ok(())
        })
        .await?;
        Ok(info)
    }

    async fn upload_info(&self, repo: &RepoName, id: &UploadId) -> Result<UploadInfo> {
        let lock = self.inner.locks.lock(id).await;
        let (repo, id) = (repo.clone(), id.clone());
        self.run(move |inner| {
            let mut info = inner.read_upload_info(&repo, &id)?;
            let data = inner.open_upload_data(&id, false)?;
            info.size = data.metadata()?.len();
            drop(lock);
            Ok(info)
        })
        .await
    }

    async fn upload_append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: u64,
        mut body: ByteStream,
    ) -> Result<u64> {
        let lock = self.inner.locks.lock(id).await;
        let (repo, id) = (repo.clone(), id.clone());
        let (file, current, lock) = self
            .run(move |inner| {
                inner.read_upload_info(&repo, &id)?;
                let file = inner.open_upload_data(&id, true)?;
                let meta = file.metadata()?;
                if meta.nlink() > 1 {
                    // A commit published these bytes (a hard link to the blob) and was
                    // interrupted before removing the session: the session is finished, and
                    // writing to it would change the published blob.
                    return Err(StorageError::NotFound);
                }
                Ok((file, meta.len(), lock))
            })
            .await?;
        if offset != current {
            return Err(StorageError::OffsetMismatch {
                requested: offset,
                current,
            });
        }
        let mut append = Append::new(file, current, lock);
        // The body's chunks are copied into pooled buffers at once, so the HTTP layer reuses its
        // read buffer instead of allocating (and the kernel faulting in) fresh memory for every
        // read while a batch waits for its write.
        let pool = &self.inner.writes;
        let received = async {
            let mut buffer = pool.take().map_err(StorageError::Io)?;
            while let Some(chunk) = body.next().await {
                let mut rest = chunk.map_err(StorageError::Body)?;
                while !rest.is_empty() {
                    let taken = buffer.fill(&rest);
                    let _ = rest.split_to(taken);
                    if buffer.is_full() {
                        let next = pool.take().map_err(StorageError::Io)?;
                        let full = std::mem::replace(&mut buffer, next);
                        append
                            .write(vec![full.freeze()], false)
                            .await
                            .map_err(StorageError::Io)?;
                    }
                }
            }
            Ok::<_, StorageError>(buffer)
        }
        .await;
        match received {
            Ok(buffer) if buffer.is_empty() => append.finish(Vec::new()).await,
            Ok(buffer) => append.finish(vec![buffer.freeze()]).await,
            Err(e) => {
                append.rollback().await;
                Err(e)
            }
        }
    }

    async fn upload_read(&self, repo: &RepoName, id: &UploadId) -> Result<ByteStream> {
        let lock = self.inner.locks.lock(id).await;
        let (repo, id) = (repo.clone(), id.clone());
        let (file, len) = self
            .run(move |inner| {
                inner.read_upload_info(&repo, &id)?;
                let file = inner.open_upload_data(&id, false)?;
                let len = file.metadata()?.len();
                // Appends only ever add after `len`, and a commit or delete leaves the open
                // file readable: the snapshot stays valid without holding the locks.
                file.unlock()?;
                drop(lock);
                Ok((file, len))
            })
            .await?;
        Ok(file_stream(file, 0, len, Arc::clone(&self.inner.reads)))
    }

    async fn upload_commit(&self, repo: &RepoName, id: &UploadId, digest: &Digest) -> Result<u64> {
        let lock = self.inner.locks.lock(id).await;
        let (repo, id, digest) = (repo.clone(), id.clone(), digest.clone());
        self.run(move |inner| {
            inner.read_upload_info(&repo, &id)?;
            let file = inner.open_upload_data(&id, true)?;
            file.sync_data()?;
            let size = file.metadata()?.len();
            inner.publish_blob(&inner.upload_dir(&id).join(UPLOAD_DATA), &digest)?;
            inner.remove_upload_dir(&id)?;
            drop(file);
            drop(lock);
            Ok(size)
        })
        .await
    }

    async fn upload_delete(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        let lock = self.inner.locks.lock(id).await;
        let (repo, id) = (repo.clone(), id.clone());
        self.run(move |inner| {
            inner.read_upload_info(&repo, &id)?;
            let file = match inner.open_upload_data(&id, true) {
                Ok(file) => Some(file),
                Err(StorageError::NotFound) => None,
                Err(e) => return Err(e),
            };
            inner.remove_upload_dir(&id)?;
            drop(file);
            drop(lock);
            Ok(())
        })
        .await
    }

    async fn uploads(&self) -> Result<Vec<UploadInfo>> {
        self.run(|inner| {
            let mut out = Vec::new();
            for (name, kind) in read_dir_names(&inner.uploads_dir())? {
                let Ok(id) = name.parse::<UploadId>() else {
                    continue;
                };
                if !kind.is_dir() {
                    continue;
                }
                let dir = inner.upload_dir(&id);
                let info_path = dir.join(UPLOAD_INFO);
                let Some(record) = Inner::read_optional(&info_path)? else {
                    continue;
                };
                let mut info: UploadInfo = match serde_json::from_slice(&record) {
                    Ok(info) => info,
                    Err(e) => {
                        tracing::warn!(path = %info_path.display(), error = %e, "skipping a corrupt upload record");
                        continue;
                    }
                };
                match fs::metadata(dir.join(UPLOAD_DATA)) {
                    Ok(m) => info.size = m.len(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                }
                out.push(info);
            }
            out.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(out)
        })
        .await
    }

    async fn manifest_link(
        &self,
        repo: &RepoName,
        digest: &Digest,
        meta: &ManifestMeta,
    ) -> Result<()> {
        let record = serde_json::to_vec(meta)
            .map_err(|e| StorageError::Backend(format!("cannot encode a manifest record: {e}")))?;
        let (repo, digest) = (repo.clone(), digest.clone());
        self.run(move |inner| {
            let path = inner.repo_digest_path(&repo, MANIFESTS_DIR, &digest);
            if Inner::read_optional(&path)?.is_some_and(|existing| existing == record) {
                // A push again: its time is the push time retention reads.
                return match File::options().write(true).open(&path) {
                    Ok(file) => Ok(file.set_modified(SystemTime::now())?),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        Ok(inner.write_record(&path, &record)?)
                    }
                    Err(e) => Err(e.into()),
                };
            }
            let written = inner.write_record(&path, &record);
            inner.tags.invalidate(&repo, None);
            Ok(written?)
        })
        .await
    }

    async fn manifest_meta(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<ManifestMeta>> {
        let (repo, digest) = (repo.clone(), digest.clone());
        self.run(move |inner| inner.read_manifest_meta(&repo, &digest))
            .await
    }

    async fn manifest_unlink(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let (repo, digest) = (repo.clone(), digest.clone());
        self.run(move |inner| {
            let removed =
                inner.remove_record(&inner.repo_digest_path(&repo, MANIFESTS_DIR, &digest));
            inner.tags.invalidate(&repo, None);
            Ok(removed?)
        })
        .await
    }

    async fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        let (repo, tag) = (repo.clone(), tag.clone());
        self.run(move |inner| inner.read_tag(&repo, &tag)).await
    }

    async fn tag_set(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
        let (repo, tag, digest) = (repo.clone(), tag.clone(), digest.clone());
        self.run(move |inner| {
            let written =
                inner.write_record(&inner.tag_path(&repo, &tag), digest.to_string().as_bytes());
            inner.tags.invalidate(&repo, Some(&tag));
            Ok(written?)
        })
        .await
    }

    async fn tag_create(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<Option<Digest>> {
        let (repo, tag, digest) = (repo.clone(), tag.clone(), digest.clone());
        self.run(move |inner| {
            let created =
                inner.create_record(&inner.tag_path(&repo, &tag), digest.to_string().as_bytes());
            inner.tags.invalidate(&repo, Some(&tag));
            match created? {
                true => Ok(None),
                false => inner.read_tag(&repo, &tag)?.map(Some).ok_or_else(|| {
                    StorageError::Backend(format!(
                        "tag {tag} of {repo} vanished while it was being created"
                    ))
                }),
            }
        })
        .await
    }

    async fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let (repo, tag) = (repo.clone(), tag.clone());
        self.run(move |inner| {
            let removed = inner.remove_record(&inner.tag_path(&repo, &tag));
            inner.tags.invalidate(&repo, Some(&tag));
            Ok(removed?)
        })
        .await
    }

    async fn tags_delete_if(&self, repo: &RepoName, tags: &[(Tag, Digest)]) -> Result<Vec<bool>> {
        let (repo, tags) = (repo.clone(), tags.to_vec());
        // One trip to the blocking pool, and one directory sync, for the whole batch.
        self.run(move |inner| {
            let mut removed = Vec::with_capacity(tags.len());
            let mut result = Ok(());
            for (tag, digest) in &tags {
                let path = inner.tag_path(&repo, tag);
                let outcome = inner.remove_record_if(&path, digest.to_string().as_bytes());
                inner.tags.invalidate(&repo, Some(tag));
                match outcome {
                    Ok(gone) => removed.push(gone),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if removed.contains(&true) {
                let dir = inner.repo_dir(&repo).join(TAGS_DIR);
                sync_dir(&dir)?;
            }
            result?;
            Ok(removed)
        })
        .await
    }

    async fn tag_manifest(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<(Digest, ManifestMeta)>> {
        if let Some(resolved) = self.inner.tags.get(repo, tag) {
            return Ok(Some(resolved));
        }
        // Both records in one trip to the blocking pool.
        let generation = self.inner.tags.generation();
        let read_at = Instant::now();
        let (repo, tag) = (repo.clone(), tag.clone());
        self.run(move |inner| {
            let Some(digest) = inner.read_tag(&repo, &tag)? else {
                return Ok(None);
            };
            let resolved = inner
                .read_manifest_meta(&repo, &digest)?
                .map(|meta| (digest, meta));
            if let Some(resolved) = &resolved {
                inner
                    .tags
                    .insert(&repo, &tag, resolved, generation, read_at);
            }
            Ok(resolved)
        })
        .await
    }

    async fn tags(&self, repo: &RepoName) -> Result<Vec<Tag>> {
        let repo = repo.clone();
        self.run(move |inner| {
            let dir = inner.repo_dir(&repo).join(TAGS_DIR);
            let mut tags: Vec<Tag> = read_dir_names(&dir)?
                .into_iter()
                .filter(|(_, kind)| kind.is_file())
                .filter_map(|(name, _)| name.parse().ok())
                .collect();
            tags.sort();
            Ok(tags)
        })
        .await
    }

    async fn tags_after(
        &self,
        repo: &RepoName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Tag>> {
        let (repo, after) = (repo.clone(), after.map(str::to_owned));
        self.run(move |inner| {
            // The `limit` smallest names after `after`, largest on top: a page of a big
            // repository holds no more than the page.
            let mut page = BinaryHeap::new();
            for_each_dir_entry(&inner.repo_dir(&repo).join(TAGS_DIR), |name, kind| {
                if !kind.is_file() || after.as_deref().is_some_and(|after| name.as_str() <= after) {
                    return Ok::<_, StorageError>(());
                }
                let Ok(tag) = name.parse::<Tag>() else {
                    return Ok(());
                };
                if page.len() < limit {
                    page.push(tag);
                } else if page.peek().is_some_and(|largest| tag < *largest) {
                    page.pop();
                    page.push(tag);
                }
                Ok(())
            })?;
            Ok(page.into_sorted_vec())
        })
        .await
    }

    async fn tags_of(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Tag>> {
        let (repo, digest) = (repo.clone(), digest.clone());
        // One trip to the blocking pool for the whole scan, and the tag cache left alone.
        self.run(move |inner| {
            let mut pointing = Vec::new();
            for_each_dir_entry(&inner.repo_dir(&repo).join(TAGS_DIR), |name, kind| {
                let Ok(tag) = name.parse::<Tag>() else {
                    return Ok::<_, StorageError>(());
                };
                if kind.is_file() && inner.read_tag(&repo, &tag)?.as_ref() == Some(&digest) {
                    pointing.push(tag);
                }
                Ok(())
            })?;
            pointing.sort();
            Ok(pointing)
        })
        .await
    }

    async fn tag_records(&self, repo: &RepoName) -> Result<Vec<TagRecord>> {
        let repo = repo.clone();
        self.run(move |inner| {
            let dir = inner.repo_dir(&repo).join(TAGS_DIR);
            let mut records = Vec::new();
            for_each_dir_entry(&dir, |name, kind| {
                let Ok(tag) = name.parse::<Tag>() else {
                    return Ok::<_, StorageError>(());
                };
                if !kind.is_file() {
                    return Ok(());
                }
                // One open per tag: its time from the open file, then its content.
                let path = dir.join(&name);
                let mut file = match File::open(&path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                let set_at = file.metadata()?.modified()?;
                let mut record = Vec::with_capacity(80);
                io::Read::read_to_end(&mut file, &mut record)?;
                let digest = std::str::from_utf8(&record)
                    .map_err(|e| super::layout::corrupt(&path, e))?
                    .trim()
                    .parse()
                    .map_err(|e| super::layout::corrupt(&path, e))?;
                records.push(TagRecord {
                    tag,
                    digest,
                    set_at,
                });
                Ok(())
            })?;
            records.sort_by(|a, b| a.tag.cmp(&b.tag));
            Ok(records)
        })
        .await
    }

    async fn manifest_records(&self, repo: &RepoName) -> Result<Vec<ManifestRecord>> {
        let repo = repo.clone();
        self.run(move |inner| {
            let dir = inner.repo_dir(&repo).join(MANIFESTS_DIR);
            let mut records = Vec::new();
            for (alg, kind) in read_dir_names(&dir)? {
                if !kind.is_dir() {
                    continue;
                }
                for (hex, kind) in read_dir_names(&dir.join(&alg))? {
                    let Some(digest) = parse_digest_parts(&alg, &hex).filter(|_| kind.is_file())
                    else {
                        continue;
                    };
                    let path = dir.join(&alg).join(&hex);
                    let linked_at = match fs::metadata(&path).and_then(|m| m.modified()) {
                        Ok(t) => t,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e.into()),
                    };
                    if let Some(meta) = inner.read_manifest_meta(&repo, &digest)? {
                        records.push(ManifestRecord {
                            digest,
                            meta,
                            linked_at,
                        });
                    }
                }
            }
            records.sort_by(|a, b| a.digest.cmp(&b.digest));
            Ok(records)
        })
        .await
    }

    async fn pull_record(&self, repo: &RepoName, target: &PullTarget) -> Result<()> {
        let (repo, target) = (repo.clone(), target.clone());
        self.run(move |inner| Ok(inner.write_record(&inner.pull_path(&repo, &target), b"")?))
            .await
    }

    async fn pull_records(&self, repo: &RepoName) -> Result<Vec<(PullTarget, SystemTime)>> {
        let repo = repo.clone();
        self.run(move |inner| {
            let dir = inner.pulls_dir(&repo);
            let modified =
                |path: &std::path::Path| match fs::metadata(path).and_then(|m| m.modified()) {
                    Ok(t) => Ok(Some(t)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                };
            let mut records = Vec::new();
            for (name, kind) in read_dir_names(&dir.join(PULLED_TAGS))? {
                if let (Ok(tag), true) = (name.parse::<Tag>(), kind.is_file())
                    && let Some(at) = modified(&dir.join(PULLED_TAGS).join(&name))?
                {
                    records.push((PullTarget::Tag(tag), at));
                }
            }
            let manifests = dir.join(PULLED_MANIFESTS);
            for (alg, kind) in read_dir_names(&manifests)? {
                if !kind.is_dir() {
                    continue;
                }
                for (hex, _) in read_dir_names(&manifests.join(&alg))? {
                    if let Some(digest) = parse_digest_parts(&alg, &hex)
                        && let Some(at) = modified(&manifests.join(&alg).join(&hex))?
                    {
                        records.push((PullTarget::Manifest(digest), at));
                    }
                }
            }
            records.sort();
            Ok(records)
        })
        .await
    }

    async fn referrer_add(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
        descriptor: Bytes,
    ) -> Result<()> {
        let (repo, subject, referrer) = (repo.clone(), subject.clone(), referrer.clone());
        self.run(move |inner| {
            inner.write_record(
                &inner.referrer_path(&repo, &subject, &referrer),
                &descriptor,
            )?;
            Ok(())
        })
        .await
    }

    async fn referrer_remove(
        &self,
        repo: &RepoName,
        subject: &Digest,
        referrer: &Digest,
    ) -> Result<()> {
        let (repo, subject, referrer) = (repo.clone(), subject.clone(), referrer.clone());
        self.run(move |inner| {
            inner.remove_record(&inner.referrer_path(&repo, &subject, &referrer))?;
            Ok(())
        })
        .await
    }

    async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Bytes>> {
        let (repo, subject) = (repo.clone(), subject.clone());
        self.run(move |inner| {
            let dir = inner.referrers_dir(&repo, &subject);
            let mut found = Vec::new();
            for (alg, kind) in read_dir_names(&dir)? {
                if !kind.is_dir() {
                    continue;
                }
                for (hex, kind) in read_dir_names(&dir.join(&alg))? {
                    let Some(digest) = parse_digest_parts(&alg, &hex) else {
                        continue;
                    };
                    if !kind.is_file() {
                        continue;
                    }
                    // Removed since listed: skip.
                    if let Some(record) = Inner::read_optional(&dir.join(&alg).join(&hex))? {
                        found.push((digest, Bytes::from(record)));
                    }
                }
            }
            found.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(found.into_iter().map(|(_, d)| d).collect())
        })
        .await
    }

    async fn record_get(&self, key: &RecordKey) -> Result<Option<Bytes>> {
        let key = key.clone();
        self.run(move |inner| Ok(Inner::read_optional(&inner.record_path(&key))?.map(Bytes::from)))
            .await
    }

    async fn record_put(&self, key: &RecordKey, data: Bytes) -> Result<()> {
        let key = key.clone();
        self.run(move |inner| Ok(inner.write_record(&inner.record_path(&key), &data)?))
            .await
    }

    async fn record_read(&self, key: &RecordKey) -> Result<Option<VersionedRecord>> {
        let key = key.clone();
        self.run(move |inner| Ok(inner.read_versioned(&key)?)).await
    }

    async fn record_swap(
        &self,
        key: &RecordKey,
        expected: Option<&str>,
        data: Bytes,
    ) -> Result<Option<String>> {
        let (key, expected) = (key.clone(), expected.map(str::to_owned));
        self.run(move |inner| Ok(inner.swap_record(&key, expected.as_deref(), &data)?))
            .await
    }

    async fn repositories(&self) -> Result<Vec<RepoName>> {
        self.run(|inner| {
            let mut out = Vec::new();
            walk_repositories(
                &inner.root.join(REPOSITORIES_DIR),
                &mut Vec::new(),
                &mut out,
            )?;
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn check(&self) -> Result<()> {
        self.run(|inner| {
            let tmp = TempPath::new(inner.tmp.next_path());
            let mut file = File::create_new(&tmp.path)?;
            file.write_all(b"ok")?;
            drop(file);
            drop(tmp);
            Ok(())
        })
        .await
    }
}
