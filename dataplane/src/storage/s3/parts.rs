//! Memory for the parts of multipart uploads.
//!
//! Every append fills part-sized buffers while earlier parts upload. Buffers this size, made
//! and freed by the hundred per GiB from several threads, fragment the C allocator's
//! per-thread arenas: the process keeps far more memory than it uses. Part buffers are
//! therefore anonymous memory maps, reused through a small pool: a buffer goes back to the
//! pool when the last reference to the part's bytes is dropped (the SDK holds them until the
//! part request has finished), and beyond [`PartPool::keep`] idle ones the memory goes back to
//! the system at once.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use memmap2::MmapMut;

/// A pool of equally sized part buffers.
#[derive(Debug)]
pub(super) struct PartPool {
    size: usize,
    keep: usize,
    idle: Mutex<Vec<MmapMut>>,
}

impl PartPool {
    /// A pool of buffers of `size` bytes that keeps at most `keep` idle ones.
    pub(super) fn new(size: usize, keep: usize) -> Arc<Self> {
        Arc::new(Self {
            size,
            keep,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// An empty buffer: an idle one, or a new mapping.
    pub(super) fn take(self: &Arc<Self>) -> io::Result<PartBuffer> {
        let reused = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let map = match reused {
            Some(map) => map,
            None => MmapMut::map_anon(self.size)?,
        };
        Ok(PartBuffer {
            map: Some(map),
            len: 0,
            pool: Arc::clone(self),
        })
    }

    /// Buffers waiting to be reused.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn give_back(&self, map: MmapMut) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.keep {
            idle.push(map);
        }
        // Otherwise dropped here: unmapped, the memory is the system's again.
    }
}

/// A part being filled; [`PartBuffer::freeze`] turns it into the bytes to send.
#[derive(Debug)]
pub(super) struct PartBuffer {
    /// Always `Some` until the drop hands the map back.
    map: Option<MmapMut>,
    len: usize,
    pool: Arc<PartPool>,
}

impl PartBuffer {
    /// Copies as much of `data` as fits; returns how many bytes it took.
    pub(super) fn fill(&mut self, data: &[u8]) -> usize {
        let map = self.map.as_mut().expect("part buffer in use");
        let take = (map.len() - self.len).min(data.len());
        map[self.len..self.len + take].copy_from_slice(&data[..take]);
        self.len += take;
        take
    }

    /// Whether the buffer holds nothing yet.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the buffer holds a whole part.
    pub(super) fn is_full(&self) -> bool {
        self.len == self.pool.size
    }

    /// The bytes held, without copying; the buffer returns to the pool when the last clone
    /// of them is dropped.
    pub(super) fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PartBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.map.as_ref().expect("part buffer in use")[..self.len]
    }
}

impl Drop for PartBuffer {
    fn drop(&mut self) {
        if let Some(map) = self.map.take() {
            self.pool.give_back(map);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_up_to_the_part_size_and_freezes_what_it_holds() {
        let pool = PartPool::new(8, 2);
        let mut part = pool.take().unwrap();
        assert!(part.is_empty());
        assert_eq!(part.fill(b"abc"), 3);
        assert!(!part.is_empty());
        assert!(!part.is_full());
        assert_eq!(part.fill(b"defghijk"), 5, "only the room left is taken");
        assert!(part.is_full());
        assert_eq!(part.fill(b"x"), 0);
        assert_eq!(&part.freeze()[..], b"abcdefgh");
    }

    #[test]
    fn a_buffer_returns_when_its_last_bytes_are_dropped() {
        let pool = PartPool::new(8, 2);
        let mut part = pool.take().unwrap();
        part.fill(b"part one");
        let bytes = part.freeze();
        let clone = bytes.clone();
        drop(bytes);
        assert_eq!(pool.idle(), 0, "a clone still holds the bytes");
        assert_eq!(&clone[..], b"part one");
        drop(clone);
        assert_eq!(pool.idle(), 1);

        // The reused buffer starts empty, whatever it held before.
        let mut again = pool.take().unwrap();
        assert_eq!(pool.idle(), 0);
        again.fill(b"two");
        assert_eq!(&again.freeze()[..], b"two");
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn unfrozen_buffers_return_too_and_the_pool_keeps_only_a_few() {
        let pool = PartPool::new(8, 2);
        let parts: Vec<PartBuffer> = (0..5).map(|_| pool.take().unwrap()).collect();
        assert_eq!(pool.idle(), 0);
        drop(parts);
        assert_eq!(pool.idle(), 2, "beyond `keep` the buffers are unmapped");
    }
}
