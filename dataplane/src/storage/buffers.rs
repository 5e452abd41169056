//! Reusable memory for the large buffers that blobs stream through.
//!
//! Blob bytes pass through buffers of a fixed size: the parts an S3 append uploads, the
//! batches a filesystem append writes, the chunks a filesystem read hands to the HTTP
//! layer. Made and freed by the hundred per GiB from several threads, buffers this size
//! fragment the C allocator's per-thread arenas (the process keeps far more memory than it
//! uses) or are mapped, faulted in and zeroed afresh every time. Here they are anonymous memory maps reused through a small pool: a buffer goes
//! back to its pool when the last reference to its bytes is dropped (a frozen buffer is a
//! [`Bytes`] that the HTTP layer or the S3 SDK may hold for a while), and beyond
//! [`BufferPool::new`]'s `keep` idle ones the memory goes back to the system at once.

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use memmap2::MmapMut;

/// A pool of equally sized buffers.
#[derive(Debug)]
pub struct BufferPool {
    size: usize,
    keep: usize,
    idle: Mutex<Vec<MmapMut>>,
}

impl BufferPool {
    /// A pool of buffers of `size` bytes that keeps at most `keep` idle ones.
    pub fn new(size: usize, keep: usize) -> Arc<Self> {
        Arc::new(Self {
            size,
            keep,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// An empty buffer: an idle one, or a new mapping.
    pub fn take(self: &Arc<Self>) -> io::Result<PooledBuffer> {
        let reused = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let map = match reused {
            Some(map) => map,
            None => MmapMut::map_anon(self.size)?,
        };
        Ok(PooledBuffer {
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

/// A buffer being filled; [`PooledBuffer::freeze`] turns what it holds into [`Bytes`].
#[derive(Debug)]
pub struct PooledBuffer {
    /// Always `Some` until the drop hands the map back.
    map: Option<MmapMut>,
    len: usize,
    pool: Arc<BufferPool>,
}

impl PooledBuffer {
    fn map_mut(&mut self) -> &mut MmapMut {
        self.map
            .as_mut()
            .expect("a pooled buffer holds its map until dropped")
    }

    /// Copies as much of `data` as fits; returns how many bytes it took.
    pub fn fill(&mut self, data: &[u8]) -> usize {
        let len = self.len;
        let map = self.map_mut();
        let take = (map.len() - len).min(data.len());
        map[len..len + take].copy_from_slice(&data[..take]);
        self.len += take;
        take
    }

    /// Lets `read` write into the free space (at most `max` bytes of it) and keeps the bytes
    /// it says it wrote.
    pub fn fill_with(
        &mut self,
        max: usize,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let len = self.len;
        let map = self.map_mut();
        let end = map.len().min(len.saturating_add(max));
        let n = read(&mut map[len..end])?;
        self.len += n.min(end - len);
        Ok(n)
    }

    /// Whether the buffer holds nothing yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the buffer is full.
    pub fn is_full(&self) -> bool {
        self.len == self.pool.size
    }

    /// The bytes held, without copying; the buffer returns to the pool when the last clone
    /// of them is dropped.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledBuffer {
    fn as_ref(&self) -> &[u8] {
        &self
            .map
            .as_ref()
            .expect("a pooled buffer holds its map until dropped")[..self.len]
    }
}

impl Drop for PooledBuffer {
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
    fn fills_up_to_the_buffer_size_and_freezes_what_it_holds() {
        let pool = BufferPool::new(8, 2);
        let mut buffer = pool.take().unwrap();
        assert!(buffer.is_empty());
        assert_eq!(buffer.fill(b"abc"), 3);
        assert!(!buffer.is_empty());
        assert!(!buffer.is_full());
        assert_eq!(buffer.fill(b"defghijk"), 5, "only the room left is taken");
        assert!(buffer.is_full());
        assert_eq!(buffer.fill(b"x"), 0);
        assert_eq!(&buffer.freeze()[..], b"abcdefgh");
    }

    #[test]
    fn fill_with_offers_at_most_the_free_space_and_keeps_what_was_read() {
        let pool = BufferPool::new(8, 2);
        let mut buffer = pool.take().unwrap();
        buffer.fill(b"ab");
        let offered = buffer
            .fill_with(100, |free| {
                assert_eq!(free.len(), 6);
                free[..3].copy_from_slice(b"cde");
                Ok(3)
            })
            .unwrap();
        assert_eq!(offered, 3);
        let offered = buffer
            .fill_with(2, |free| {
                assert_eq!(free.len(), 2, "limited by max");
                free.copy_from_slice(b"fg");
                Ok(2)
            })
            .unwrap();
        assert_eq!(offered, 2);
        let failed = buffer.fill_with(8, |_| Err(io::Error::other("disk on fire")));
        assert!(failed.is_err());
        assert_eq!(
            &buffer.freeze()[..],
            b"abcdefg",
            "a failed read adds nothing"
        );
    }

    #[test]
    fn a_buffer_returns_when_its_last_bytes_are_dropped() {
        let pool = BufferPool::new(8, 2);
        let mut buffer = pool.take().unwrap();
        buffer.fill(b"part one");
        let bytes = buffer.freeze();
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
        let pool = BufferPool::new(8, 2);
        let buffers: Vec<PooledBuffer> = (0..5).map(|_| pool.take().unwrap()).collect();
        assert_eq!(pool.idle(), 0);
        drop(buffers);
        assert_eq!(pool.idle(), 2, "beyond `keep` the buffers are unmapped");
    }
}
