//! Limits on failed logins, per source address and per credential id.
//!
//! Every failed secret check (a wrong secret, an unknown id) takes one token from its source's
//! bucket and, for a credential that exists, one from that credential's bucket; buckets refill
//! steadily (`failures` per `per`). A login is refused before any argon2 work, with the time
//! until the next token (`429` with `Retry-After` at the HTTP layer), when:
//! - its source's bucket is empty, or
//! - its credential's bucket is empty and its source has failed recently itself.
//!
//! So a flood of wrong secrets for one credential, from anywhere, cannot lock that
//! credential's honest clients out: a source with a clean record is still checked. Sources
//! with recent failures are also [`Priority::Suspect`] in the queue of checks
//! ([`super::secret::SecretVerifier`]), so they cannot starve the others of cores.
//!
//! Ids are counted whether or not a credential has them, so a refusal says nothing about which
//! ids exist; they are kept as keyed 64-bit digests (bounded size whatever a client sends).
//! IPv6 sources are grouped by their /64 (one host usually holds a whole /64). Memory is
//! bounded: buckets that have refilled are forgotten first.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{LoginLimits, LoginRate};

/// The most buckets of each kind kept.
const MAX_BUCKETS: usize = 65_536;

/// Where a check waits for its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// No recent failures from this source.
    Clean,
    /// This source failed recently: its checks run only when no clean check waits, and never
    /// on every core at once.
    Suspect,
}

/// A login refused for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// When to try again.
    pub retry_after: Duration,
    /// Which limit refused it.
    pub limit: Limit,
}

/// The limit that refused a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Failures from the source address.
    Source,
    /// Failures for the credential id.
    Credential,
}

impl Limit {
    /// The label in audit events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Credential => "credential",
        }
    }
}

/// A token bucket of failures.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(rate: &LoginRate, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate.failures),
            updated: now,
        }
    }

    /// Refills for the time passed since the last update.
    fn refill(&mut self, rate: &LoginRate, now: Instant) {
        let per_token = per_token(rate);
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed / per_token.as_secs_f64()).min(f64::from(rate.failures));
        self.updated = now;
    }

    fn is_full(&self, rate: &LoginRate, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, now);
        b.tokens >= f64::from(rate.failures)
    }

    /// Time until one token is back.
    fn wait(&self, rate: &LoginRate) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        per_token(rate).mul_f64(missing)
    }
}

fn per_token(rate: &LoginRate) -> Duration {
    rate.per.0 / rate.failures.max(1)
}

/// The failure buckets of one process.
#[derive(Debug)]
pub struct LoginThrottle {
    limits: LoginLimits,
    sources: Mutex<HashMap<IpAddr, Bucket>>,
    credentials: Mutex<HashMap<u64, Bucket>>,
    /// Keys the digests of credential ids (random per process).
    ids: RandomState,
}

impl LoginThrottle {
    /// Buckets for these limits.
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            limits,
            sources: Mutex::new(HashMap::new()),
            credentials: Mutex::new(HashMap::new()),
            ids: RandomState::new(),
        }
    }

    /// Decides whether a login from `source` for the credential id `credential` may be
    /// checked now, and at which priority.
    pub fn admit(
        &self,
        source: Option<IpAddr>,
        credential: Option<&str>,
        now: Instant,
    ) -> Result<Priority, Throttled> {
        let mut suspect = false;
        if let Some(source) = source.map(group) {
            let rate = &self.limits.per_source;
            let mut sources = lock(&self.sources);
            if let Some(bucket) = sources.get_mut(&source) {
                bucket.refill(rate, now);
                if bucket.tokens < 1.0 {
                    return Err(Throttled {
                        retry_after: bucket.wait(rate),
                        limit: Limit::Source,
                    });
                }
                suspect = bucket.tokens < f64::from(rate.failures);
            }
        }
        if suspect && let Some(id) = credential {
            let rate = &self.limits.per_credential;
            let mut credentials = lock(&self.credentials);
            if let Some(bucket) = credentials.get_mut(&self.ids.hash_one(id)) {
                bucket.refill(rate, now);
                if bucket.tokens < 1.0 {
                    return Err(Throttled {
                        retry_after: bucket.wait(rate),
                        limit: Limit::Credential,
                    });
                }
            }
        }
        Ok(if suspect {
            Priority::Suspect
        } else {
            Priority::Clean
        })
    }

    /// Records a failed check.
    pub fn failed(&self, source: Option<IpAddr>, credential: Option<&str>, now: Instant) {
        if let Some(source) = source.map(group) {
            take(&self.sources, source, &self.limits.per_source, now);
        }
        if let Some(id) = credential {
            let key = self.ids.hash_one(id);
            take(&self.credentials, key, &self.limits.per_credential, now);
        }
    }

    /// How many buckets are kept (sources, credentials).
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        (lock(&self.sources).len(), lock(&self.credentials).len())
    }
}

fn take<K: std::hash::Hash + Eq>(
    map: &Mutex<HashMap<K, Bucket>>,
    key: K,
    rate: &LoginRate,
    now: Instant,
) {
    let mut map = lock(map);
    if map.len() >= MAX_BUCKETS && !map.contains_key(&key) {
        map.retain(|_, b| !b.is_full(rate, now));
        if map.len() >= MAX_BUCKETS {
            // Every bucket is in use (a flood from very many sources): forget the fullest
            // half rather than grow.
            let mut levels: Vec<f64> = map.values().map(|b| b.tokens).collect();
            levels.sort_by(f64::total_cmp);
            let cut = levels[levels.len() / 2];
            map.retain(|_, b| b.tokens < cut);
        }
    }
    let bucket = map.entry(key).or_insert_with(|| Bucket::full(rate, now));
    bucket.refill(rate, now);
    bucket.tokens = (bucket.tokens - 1.0).max(0.0);
}

/// The key of a source: IPv4 as it is (also when written IPv4-mapped), IPv6 by its /64.
fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use crate::config::HumanDuration;

    use super::*;

    fn throttle(source: u32, credential: u32) -> LoginThrottle {
        LoginThrottle::new(LoginLimits {
            per_source: LoginRate {
                failures: source,
                per: HumanDuration(Duration::from_secs(60)),
            },
            per_credential: LoginRate {
                failures: credential,
                per: HumanDuration(Duration::from_secs(60)),
            },
        })
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn a_source_is_refused_once_its_failures_are_spent_and_recovers() {
        let t = throttle(3, 100);
        let now = Instant::now();
        let attacker = ip("203.0.113.9");
        assert_eq!(t.admit(attacker, Some("ci"), now), Ok(Priority::Clean));
        for _ in 0..3 {
            t.failed(attacker, Some("ci"), now);
        }
        let refused = t.admit(attacker, None, now).unwrap_err();
        assert_eq!(refused.limit, Limit::Source);
        // One failure back every 20 s (3 per minute).
        assert_eq!(refused.retry_after, Duration::from_secs(20));
        let later = now + Duration::from_secs(20);
        assert_eq!(t.admit(attacker, None, later), Ok(Priority::Suspect));
        let much_later = now + Duration::from_secs(60);
        assert_eq!(t.admit(attacker, None, much_later), Ok(Priority::Clean));
        // Others were never affected.
        assert_eq!(
            t.admit(ip("198.51.100.1"), Some("ci"), now),
            Ok(Priority::Clean)
        );
    }

    #[test]
    fn a_flooded_credential_still_admits_sources_with_a_clean_record() {
        let t = throttle(1000, 5);
        let now = Instant::now();
        for i in 0..10u8 {
            t.failed(ip(&format!("203.0.113.{i}")), Some("ci"), now);
        }
        // A source that failed itself is refused on the spent credential...
        let refused = t.admit(ip("203.0.113.1"), Some("ci"), now).unwrap_err();
        assert_eq!(refused.limit, Limit::Credential);
        // ...but not on another one, and a clean source is checked as usual.
        assert_eq!(
            t.admit(ip("203.0.113.1"), Some("other"), now),
            Ok(Priority::Suspect)
        );
        assert_eq!(
            t.admit(ip("192.0.2.7"), Some("ci"), now),
            Ok(Priority::Clean)
        );
    }

    #[test]
    fn ipv6_sources_share_their_slash_64_and_mapped_ipv4_is_ipv4() {
        let t = throttle(1, 100);
        let now = Instant::now();
        t.failed(ip("2001:db8:1:2::1"), None, now);
        assert!(t.admit(ip("2001:db8:1:2:ffff::9"), None, now).is_err());
        assert!(t.admit(ip("2001:db8:1:3::1"), None, now).is_ok());
        t.failed(ip("::ffff:192.0.2.1"), None, now);
        assert!(t.admit(ip("192.0.2.1"), None, now).is_err());
        // Unknown sources (no peer address) are never refused by source.
        t.failed(None, None, now);
        assert!(t.admit(None, None, now).is_ok());
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_from_many_sources() {
        let t = throttle(10, 10);
        let now = Instant::now();
        for i in 0..(MAX_BUCKETS as u32 + 1000) {
            t.failed(Some(IpAddr::V4(i.into())), None, now);
        }
        assert!(t.sizes().0 <= MAX_BUCKETS, "{:?}", t.sizes());
    }
}
