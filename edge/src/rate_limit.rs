//! Token-bucket rate limits per principal and per client IP, tighter on
//! the auth endpoints. Buckets live in memory on each node: limits are
//! per node, which is what protects the node.

use std::{collections::HashMap, net::IpAddr, sync::Mutex, time::Instant};

/// Requests per second and burst of one kind of bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub per_second: f64,
    pub burst: f64,
}

/// The limits a node enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Unauthenticated requests, per client IP.
    pub ip: Limit,
    /// `/v1/auth/*`, per client IP (password guessing).
    pub auth_ip: Limit,
    /// Authenticated requests, per principal (ops is not limited).
    pub principal: Limit,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            ip: Limit {
                per_second: 200.0,
                burst: 400.0,
            },
            auth_ip: Limit {
                per_second: 5.0,
                burst: 30.0,
            },
            principal: Limit {
                per_second: 100.0,
                burst: 200.0,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BucketKey {
    Ip(IpAddr),
    AuthIp(IpAddr),
    Principal(u64),
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Most buckets kept; beyond this, full (idle) buckets are dropped.
const MAX_BUCKETS: usize = 100_000;

pub struct RateLimiter {
    limits: Limits,
    buckets: Mutex<HashMap<BucketKey, Bucket>>,
}

impl RateLimiter {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn limit(&self, key: &BucketKey) -> Limit {
        match key {
            BucketKey::Ip(_) => self.limits.ip,
            BucketKey::AuthIp(_) => self.limits.auth_ip,
            BucketKey::Principal(_) => self.limits.principal,
        }
    }

    /// Take one token; `Err(seconds)` says when to retry.
    pub fn take(&self, key: BucketKey, now: Instant) -> Result<(), u64> {
        let limit = self.limit(&key);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            buckets.retain(|k, b| {
                let l = self.limit(k);
                b.tokens + now.duration_since(b.at).as_secs_f64() * l.per_second < l.burst
            });
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: limit.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * limit.per_second).min(limit.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / limit.per_second.max(1e-9);
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

/// A stable bucket id for a principal's subject.
pub fn principal_key(sub: &str) -> BucketKey {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sub.hash(&mut h);
    BucketKey::Principal(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills_at_its_rate() {
        let rl = RateLimiter::new(Limits {
            ip: Limit {
                per_second: 2.0,
                burst: 3.0,
            },
            ..Limits::default()
        });
        let ip = BucketKey::Ip("10.0.0.1".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.take(ip, t0).is_ok());
        }
        assert_eq!(rl.take(ip, t0), Err(1));
        assert!(rl.take(ip, t0 + Duration::from_millis(600)).is_ok());
        // Another IP is unaffected.
        assert!(rl
            .take(BucketKey::Ip("10.0.0.2".parse().unwrap()), t0)
            .is_ok());
    }
}
