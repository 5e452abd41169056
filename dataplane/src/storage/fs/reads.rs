//! Streaming reads of blobs and sessions, in pooled buffers.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::READ_CHUNK;
use crate::oci::Digest;
use crate::storage::buffers::BufferPool;
use crate::storage::{ByteStream, Result, StorageError};

/// Streams `len` bytes of `file` from `start`, reading the next chunk while the current one is
/// being consumed, into buffers from `pool`.
pub(super) fn file_stream(file: File, start: u64, len: u64, pool: Arc<BufferPool>) -> ByteStream {
    struct State {
        file: Arc<File>,
        pool: Arc<BufferPool>,
        pos: u64,
        end: u64,
        next: Option<JoinHandle<io::Result<Bytes>>>,
    }

    impl State {
        fn spawn_read(&self) -> JoinHandle<io::Result<Bytes>> {
            let (file, pool, pos) = (Arc::clone(&self.file), Arc::clone(&self.pool), self.pos);
            let n = usize::try_from(self.end - pos).map_or(READ_CHUNK, |n| n.min(READ_CHUNK));
            tokio::task::spawn_blocking(move || {
                let mut buffer = pool.take()?;
                buffer.fill_with(n, |free| {
                    file.read_exact_at(free, pos)?;
                    Ok(free.len())
                })?;
                Ok(buffer.freeze())
            })
        }
    }

    let mut state = State {
        file: Arc::new(file),
        pool,
        pos: start,
        end: start + len,
        next: None,
    };
    if len > 0 {
        state.next = Some(state.spawn_read());
    }
    Box::pin(futures_util::stream::try_unfold(
        state,
        |mut state| async move {
            let Some(handle) = state.next.take() else {
                return Ok(None);
            };
            let chunk = handle.await.map_err(io::Error::other)??;
            state.pos += chunk.len() as u64;
            if state.pos < state.end {
                state.next = Some(state.spawn_read());
            }
            Ok(Some((chunk, state)))
        },
    ))
}

/// A blob opened for reading: small ones are read at once.
pub(super) enum Opened {
    Small(Bytes),
    Large(File, u64, u64),
}

/// Checks a requested range against an object of `size` bytes; returns `(start, len)`.
///
/// A range is satisfiable when `start < size` and `start <= end <= size`; an empty range inside
/// the object is allowed (and yields nothing), but no range fits an empty object, as in HTTP.
pub(super) fn check_range(range: Option<Range<u64>>, size: u64) -> Result<(u64, u64)> {
    match range {
        None => Ok((0, size)),
        Some(r) if r.start < size && r.start <= r.end && r.end <= size => {
            Ok((r.start, r.end - r.start))
        }
        Some(_) => Err(StorageError::RangeNotSatisfiable { size }),
    }
}

pub(super) fn parse_digest_parts(alg: &str, hex: &str) -> Option<Digest> {
    format!("{alg}:{hex}").parse().ok()
}
