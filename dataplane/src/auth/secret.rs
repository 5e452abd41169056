//! Credential secrets: stored only as salted argon2id hashes (PHC strings), verified in
//! constant time.
//!
//! Verifying an argon2 hash is deliberately expensive (tens of milliseconds and ~19 MiB), so
//! [`SecretVerifier`] runs at most one per core at once, lets checks from sources without
//! recent failures go first ([`Priority`]), and remembers recent successes for a short while
//! under a keyed digest (never the secret itself), which keeps clients that send Basic
//! authentication on every request fast.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand_core::{OsRng, RngCore};
use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;

use super::throttle::Priority;

/// How long a successful verification is remembered.
const REMEMBER_FOR: Duration = Duration::from_secs(60);
/// Most remembered verifications; the memory is cleared when full.
const REMEMBER_AT_MOST: usize = 4096;

/// Why a secret could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the secret: {0}")]
pub struct HashError(String);

/// Hashes `secret` with argon2id and a fresh random salt, as a PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$...`).
pub fn hash_secret(secret: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// A new random secret: 32 bytes, URL-safe base64 (43 characters).
pub fn generate_secret() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `secret` matches the PHC `hash`. Unparsable hashes never match. The comparison
/// of the derived key is constant-time (done by the `password-hash` crate).
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// [`verify_secret`] with argon2's working memory in `memory`, grown to what the hash's
/// parameters need and kept for the next check: repeated checks allocate nothing large (a
/// fresh 19 MiB per check would stay cached in the allocator of every thread that ran one).
fn verify_secret_with_memory(secret: &str, hash: &str, memory: &mut Vec<argon2::Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(expected), Some(salt)) = (parsed.hash, parsed.salt) else {
        return false;
    };
    let Ok(params) = argon2::Params::try_from(&parsed) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(secret.as_bytes(), salt, &mut out, &mut memory[..blocks])
        .is_ok()
        // `Output` compares in constant time.
        && argon2::password_hash::Output::new(&out).is_ok_and(|out| out == expected)
}

/// A hash with the default parameters that no secret matches: the decoy when the
/// configuration has no credential to take the parameters from ([`decoy_like`]).
pub fn default_decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_secret(&generate_secret()).unwrap_or_default())
}

/// A hash that no secret matches, with the algorithm, version and parameters of `hash` and
/// a random salt and output of the same lengths; `None` when `hash` is not an argon2 PHC
/// string. Verified instead of a real hash when a credential id is unknown, it costs what a
/// wrong secret for a known id costs, so the time of an answer does not tell whether an id
/// exists (a decoy with other parameters than the stored hashes would).
pub fn decoy_like(hash: &str) -> Option<String> {
    let parsed = PasswordHash::new(hash).ok()?;
    argon2::Algorithm::try_from(parsed.algorithm).ok()?;
    argon2::Params::try_from(&parsed).ok()?;
    let mut salt_bytes = [0u8; 64];
    let salt_len = parsed.salt?.decode_b64(&mut salt_bytes).ok()?.len();
    OsRng.fill_bytes(&mut salt_bytes[..salt_len]);
    let salt = SaltString::encode_b64(&salt_bytes[..salt_len]).ok()?;
    let mut output = vec![0u8; parsed.hash?.len()];
    OsRng.fill_bytes(&mut output);
    let decoy = PasswordHash {
        salt: Some(salt.as_salt()),
        hash: Some(argon2::password_hash::Output::new(&output).ok()?),
        ..parsed
    };
    Some(decoy.to_string())
}

/// A check refused because too many checks from suspect sources are already waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many secret checks are waiting; retry later")]
pub struct Busy;

/// Verifies secrets against hashes: a short memory of successes, then a queue of argon2
/// checks with one turn per core, in which [`Priority::Clean`] checks always go first and
/// [`Priority::Suspect`] ones never take every core.
#[derive(Debug)]
pub struct SecretVerifier {
    /// Random per process: remembered entries are digests keyed with it.
    key: [u8; 32],
    remembered: Mutex<HashMap<[u8; 32], Instant>>,
    queue: Arc<CheckQueue>,
}

impl Default for SecretVerifier {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_turns(cores)
    }
}

impl SecretVerifier {
    /// A verifier with an empty memory and one turn per available core.
    pub fn new() -> Self {
        Self::default()
    }

    /// A verifier running at most `turns` checks at once (at least one).
    pub fn with_turns(turns: usize) -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Self {
            key,
            remembered: Mutex::new(HashMap::new()),
            queue: Arc::new(CheckQueue::new(turns.max(1))),
        }
    }

    /// The index of the first hash in `hashes` that `secret` matched recently, if any.
    pub fn remembered(&self, secret: &str, hashes: &[&str]) -> Option<usize> {
        let now = Instant::now();
        let remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        hashes.iter().position(|h| {
            remembered
                .get(&self.fingerprint(secret, h))
                .is_some_and(|until| *until > now)
        })
    }

    /// Waits for a turn to run a check at `priority`.
    pub async fn turn(&self, priority: Priority) -> Result<Turn, Busy> {
        self.queue.turn(priority).await
    }

    /// Returns the index of the first hash in `hashes` that `secret` matches, checked in
    /// `turn`, and remembers a match. With no hashes (unknown credential) `decoy` is verified
    /// instead so that the answer takes as long as a wrong secret would ([`decoy_like`]).
    pub async fn check(
        &self,
        mut turn: Turn,
        secret: &str,
        hashes: &[&str],
        decoy: &str,
    ) -> Option<usize> {
        let secret_owned = secret.to_owned();
        let owned: Vec<String> = if hashes.is_empty() {
            vec![decoy.to_owned()]
        } else {
            hashes.iter().map(|h| (*h).to_owned()).collect()
        };
        let mut memory = std::mem::take(&mut turn.memory);
        let checked = tokio::task::spawn_blocking(move || {
            let found = owned
                .iter()
                .position(|h| verify_secret_with_memory(&secret_owned, h, &mut memory));
            (found, memory)
        })
        .await;
        let found = match checked {
            Ok((found, memory)) => {
                turn.memory = memory;
                found
            }
            Err(_) => None,
        }
        .filter(|_| !hashes.is_empty());
        drop(turn);
        let found = found?;
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if remembered.len() >= REMEMBER_AT_MOST {
            remembered.clear();
        }
        remembered.insert(
            self.fingerprint(secret, hashes[found]),
            Instant::now() + REMEMBER_FOR,
        );
        Some(found)
    }

    /// [`Self::remembered`], else a [`Self::check`] in the next turn at `priority` (an
    /// unknown credential against [`default_decoy`]).
    pub async fn matching(
        &self,
        secret: &str,
        hashes: &[&str],
        priority: Priority,
    ) -> Result<Option<usize>, Busy> {
        if let Some(i) = self.remembered(secret, hashes) {
            return Ok(Some(i));
        }
        let turn = self.turn(priority).await?;
        Ok(self.check(turn, secret, hashes, default_decoy()).await)
    }

    fn fingerprint(&self, secret: &str, hash: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update((hash.len() as u64).to_be_bytes());
        h.update(hash.as_bytes());
        h.update(secret.as_bytes());
        h.finalize().into()
    }
}

/// Most suspect checks waiting for a turn; more are refused ([`Busy`]).
const MAX_SUSPECT_WAITING: usize = 64;

/// Turns to run argon2 checks: `turns` at once, clean checks first, suspect ones on at most
/// `turns - 1` of them (one is always left for clean checks when there are two or more).
#[derive(Debug)]
struct CheckQueue {
    suspect_cap: usize,
    state: Mutex<QueueState>,
}

#[derive(Debug)]
struct QueueState {
    free: usize,
    /// The working memory of the free turns (allocated by the first check that needs it).
    memories: Vec<Vec<argon2::Block>>,
    suspect_running: usize,
    clean: VecDeque<oneshot::Sender<Turn>>,
    suspect: VecDeque<oneshot::Sender<Turn>>,
}

/// A turn to run one check, with the argon2 working memory that goes with it; the next
/// waiting check gets both when this is dropped.
pub struct Turn {
    queue: Arc<CheckQueue>,
    priority: Priority,
    memory: Vec<argon2::Block>,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("priority", &self.priority)
            .field("memory_blocks", &self.memory.len())
            .finish()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let memory = std::mem::take(&mut self.memory);
        CheckQueue::release(&self.queue, self.priority, memory);
    }
}

impl CheckQueue {
    fn new(turns: usize) -> Self {
        Self {
            suspect_cap: turns.saturating_sub(1).max(1),
            state: Mutex::new(QueueState {
                free: turns,
                memories: (0..turns).map(|_| Vec::new()).collect(),
                suspect_running: 0,
                clean: VecDeque::new(),
                suspect: VecDeque::new(),
            }),
        }
    }

    /// Waits for a turn at `priority`.
    async fn turn(self: &Arc<Self>, priority: Priority) -> Result<Turn, Busy> {
        let waiting = {
            let mut state = self.lock();
            let may_run = state.free > 0
                && match priority {
                    Priority::Clean => true,
                    Priority::Suspect => {
                        state.clean.is_empty() && state.suspect_running < self.suspect_cap
                    }
                };
            if may_run {
                state.free -= 1;
                if priority == Priority::Suspect {
                    state.suspect_running += 1;
                }
                let memory = state.memories.pop().unwrap_or_default();
                return Ok(Turn {
                    queue: Arc::clone(self),
                    priority,
                    memory,
                });
            }
            let (tx, rx) = oneshot::channel();
            match priority {
                Priority::Clean => state.clean.push_back(tx),
                Priority::Suspect => {
                    state.suspect.retain(|w| !w.is_closed());
                    if state.suspect.len() >= MAX_SUSPECT_WAITING {
                        return Err(Busy);
                    }
                    state.suspect.push_back(tx);
                }
            }
            rx
        };
        waiting.await.map_err(|_| Busy)
    }

    /// Gives the turn of a finished check (and its memory) to the next waiting one.
    fn release(queue: &Arc<Self>, priority: Priority, memory: Vec<argon2::Block>) {
        let next = {
            let mut state = queue.lock();
            state.free += 1;
            if priority == Priority::Suspect {
                state.suspect_running -= 1;
            }
            let next = loop {
                let (waiter, priority) = if let Some(w) = state.clean.pop_front() {
                    (w, Priority::Clean)
                } else if state.suspect_running < queue.suspect_cap
                    && let Some(w) = state.suspect.pop_front()
                {
                    (w, Priority::Suspect)
                } else {
                    break None;
                };
                if waiter.is_closed() {
                    continue;
                }
                state.free -= 1;
                if priority == Priority::Suspect {
                    state.suspect_running += 1;
                }
                break Some((waiter, priority));
            };
            if next.is_none() {
                state.memories.push(memory);
                return;
            }
            next.map(|(waiter, priority)| (waiter, priority, memory))
        };
        if let Some((waiter, priority, memory)) = next {
            // A waiter that went away in the meantime drops the turn, which releases it.
            let _ = waiter.send(Turn {
                queue: Arc::clone(queue),
                priority,
                memory,
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_salted_phc_strings_that_verify() {
        let a = hash_secret("s3cret").unwrap();
        let b = hash_secret("s3cret").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "two hashes of one secret differ by their salt");
        assert!(verify_secret("s3cret", &a));
        assert!(verify_secret("s3cret", &b));
        assert!(!verify_secret("s3cret!", &a));
        assert!(!verify_secret("s3cret", "not a phc string"));
        assert!(!a.contains("s3cret"));
    }

    #[test]
    fn generated_secrets_are_long_and_distinct() {
        let a = generate_secret();
        assert_eq!(a.len(), 43);
        assert_ne!(a, generate_secret());
    }

    #[test]
    fn a_decoy_has_the_parameters_of_its_model_and_matches_nothing() {
        let params = argon2::Params::new(64, 3, 1, None).unwrap();
        let model = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(b"s3cret", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        let decoy = decoy_like(&model).unwrap();
        let (m, d) = (
            PasswordHash::new(&model).unwrap(),
            PasswordHash::new(&decoy).unwrap(),
        );
        assert_eq!(d.algorithm, m.algorithm);
        assert_eq!(d.version, m.version);
        assert_eq!(d.params, m.params, "{decoy} costs what {model} costs");
        assert_eq!(d.salt.unwrap().len(), m.salt.unwrap().len());
        assert_ne!(d.salt, m.salt);
        assert_eq!(d.hash.unwrap().len(), m.hash.unwrap().len());
        assert_ne!(d.hash, m.hash);
        assert!(!verify_secret("s3cret", &decoy));
        assert_ne!(
            decoy_like(&model).unwrap(),
            decoy,
            "fresh randomness each time"
        );
        for bad in [
            "not a phc string",
            "$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA",
            "",
        ] {
            assert_eq!(decoy_like(bad), None, "{bad}");
        }
        assert!(default_decoy().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    }

    #[test]
    fn checks_with_reused_memory_agree_with_the_reference_verifier() {
        let small = {
            let params = argon2::Params::new(4096, 1, 1, None).unwrap();
            let salt = SaltString::generate(&mut OsRng);
            Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password(b"s3cret", &salt)
                .unwrap()
                .to_string()
        };
        let default = hash_secret("s3cret").unwrap();
        let mut memory = Vec::new();
        // The default parameters grow the memory; the smaller ones then use part of it.
        for hash in [&default, &small, &default] {
            for secret in ["s3cret", "s3cret!", ""] {
                assert_eq!(
                    verify_secret_with_memory(secret, hash, &mut memory),
                    verify_secret(secret, hash),
                    "{secret:?} against {hash}"
                );
            }
        }
        assert_eq!(memory.len(), 19 * 1024, "one block per KiB of m=19456");
        assert!(!verify_secret_with_memory(
            "s3cret",
            "not a phc string",
            &mut memory
        ));
    }

    #[tokio::test]
    async fn verifier_finds_the_matching_hash_and_remembers_it() {
        let old = hash_secret("old").unwrap();
        let new = hash_secret("new").unwrap();
        let v = SecretVerifier::new();
        let check = |secret: &'static str, hashes: Vec<String>| {
            let v = &v;
            async move {
                let hashes: Vec<&str> = hashes.iter().map(String::as_str).collect();
                v.matching(secret, &hashes, Priority::Clean).await.unwrap()
            }
        };
        assert_eq!(check("new", vec![old.clone(), new.clone()]).await, Some(1));
        assert_eq!(check("old", vec![old.clone(), new.clone()]).await, Some(0));
        assert_eq!(check("other", vec![old.clone(), new.clone()]).await, None);
        assert_eq!(check("new", vec![]).await, None, "unknown credential");
        // Remembered: a hash the secret no longer matches in that position is not confused.
        assert_eq!(check("new", vec![new.clone()]).await, Some(0));
        assert_eq!(check("new", vec![old.clone()]).await, None);
        assert_eq!(v.remembered.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn clean_checks_go_first_and_suspect_ones_never_take_every_turn() {
        let queue = Arc::new(CheckQueue::new(2));
        // One suspect check runs; a second suspect one must wait although a turn is free.
        let first = queue.turn(Priority::Suspect).await.unwrap();
        let second = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move { queue.turn(Priority::Suspect).await.map(|t| t.priority) }
        });
        tokio::task::yield_now().await;
        assert_eq!(queue.lock().suspect.len(), 1);
        // A clean check takes the free turn at once.
        let clean = queue.turn(Priority::Clean).await.unwrap();
        // With both turns in use, a clean check queued after the suspect one...
        let late_clean = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move { queue.turn(Priority::Clean).await.map(|t| t.priority) }
        });
        tokio::task::yield_now().await;
        // ...gets the next turn that frees up, before the suspect one.
        drop(clean);
        assert_eq!(late_clean.await.unwrap(), Ok(Priority::Clean));
        drop(first);
        assert_eq!(second.await.unwrap(), Ok(Priority::Suspect));
        assert_eq!(queue.lock().free, 2);
    }

    #[tokio::test]
    async fn suspect_waiters_are_bounded_and_abandoned_waits_give_their_turn_back() {
        let queue = Arc::new(CheckQueue::new(2));
        let running = queue.turn(Priority::Suspect).await.unwrap();
        let mut waiters = Vec::new();
        for _ in 0..MAX_SUSPECT_WAITING {
            let queue = Arc::clone(&queue);
            waiters.push(tokio::spawn(async move {
                queue.turn(Priority::Suspect).await.map(drop)
            }));
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(queue.turn(Priority::Suspect).await.unwrap_err(), Busy);
        // Abandoned waits (their clients went away) leave the queue.
        for w in &waiters {
            w.abort();
        }
        for w in waiters {
            let _ = w.await;
        }
        drop(running);
        assert_eq!(queue.lock().free, 2);
        let a = queue.turn(Priority::Suspect).await.unwrap();
        let b = queue.turn(Priority::Clean).await.unwrap();
        drop((a, b));
        assert_eq!(queue.lock().free, 2);
    }
}
