//! Failed authentications per source address, and the lockout that keeps a passphrase from
//! being guessed online at speed.
//!
//! A connection that received the server's key-exchange message and then did not confirm
//! (a wrong passphrase, or a peer that stopped there) has spent one guess. An address may
//! fail [`ServerOptions::auth_free_failures`](crate::ServerOptions::auth_free_failures)
//! times; after that, each failure locks it out for
//! [`ServerOptions::auth_lockout`](crate::ServerOptions::auth_lockout), doubled per further
//! failure up to [`MAX_LOCKOUT`]. While locked out, its connections are refused before any
//! guess is taken. IPv6 addresses count per /64, which one host usually holds whole.
//!
//! The table holds at most [`MAX_ADDRESSES`] entries: entries idle past the longest lockout
//! are forgotten first, then the least recently failed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Longest lockout.
pub(crate) const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Addresses remembered at once.
pub(crate) const MAX_ADDRESSES: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

/// The table of failed authentications.
#[derive(Debug)]
pub(crate) struct Strikes {
    free: u32,
    base: Duration,
    map: Mutex<HashMap<IpAddr, Entry>>,
}

fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
    }
}

impl Strikes {
    pub(crate) fn new(free: u32, base: Duration) -> Self {
        Strikes {
            free,
            base,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lockout(&self, failures: u32) -> Duration {
        let over = failures.saturating_sub(self.free);
        if over == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (over - 1).min(20);
        self.base.saturating_mul(factor).min(MAX_LOCKOUT)
    }

    /// How long `ip` is still locked out, if it is.
    pub(crate) fn locked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let e = map.get(&source(ip))?;
        let until = e.last + self.lockout(e.failures);
        (until > now).then(|| until - now)
    }

    /// Counts a failed authentication from `ip`; returns its failures so far.
    pub(crate) fn fail(&self, ip: IpAddr, now: Instant) -> u32 {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let key = source(ip);
        if !map.contains_key(&key) && map.len() >= MAX_ADDRESSES {
            let stale = MAX_LOCKOUT * 2;
            map.retain(|_, e| now.saturating_duration_since(e.last) < stale);
            if map.len() >= MAX_ADDRESSES {
                if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let e = map.entry(key).or_insert(Entry {
            failures: 0,
            last: now,
        });
        // An address that stayed quiet past the longest lockout starts again.
        if now.saturating_duration_since(e.last) > MAX_LOCKOUT * 2 {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        e.failures
    }

    /// Forgets `ip`'s failures once it has authenticated.
    pub(crate) fn succeed(&self, ip: IpAddr) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.remove(&source(ip)).is_some() && map.is_empty() {
            // Hands back the table an attack or a run of cut handshakes made the map grow to.
            *map = HashMap::new();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_failures_then_doubling_lockouts() {
        let s = Strikes::new(3, Duration::from_secs(1));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t = Instant::now();
        for n in 1..=3 {
            assert_eq!(s.fail(ip, t), n);
            assert_eq!(s.locked(ip, t), None);
        }
        s.fail(ip, t);
        assert_eq!(s.locked(ip, t), Some(Duration::from_secs(1)));
        s.fail(ip, t);
        assert_eq!(s.locked(ip, t), Some(Duration::from_secs(2)));
        assert_eq!(s.locked(ip, t + Duration::from_secs(2)), None);
        for _ in 0..40 {
            s.fail(ip, t);
        }
        assert_eq!(s.locked(ip, t), Some(MAX_LOCKOUT));
        // Others are not affected; success forgets.
        assert_eq!(s.locked("10.0.0.2".parse().unwrap(), t), None);
        s.succeed(ip);
        assert_eq!(s.locked(ip, t), None);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let s = Strikes::new(0, Duration::from_secs(1));
        let t = Instant::now();
        s.fail("2001:db8::1".parse().unwrap(), t);
        assert!(s.locked("2001:db8::ffff:2".parse().unwrap(), t).is_some());
        assert!(s.locked("2001:db8:0:1::1".parse().unwrap(), t).is_none());
        s.fail("::ffff:10.0.0.9".parse().unwrap(), t);
        assert!(s.locked("10.0.0.9".parse().unwrap(), t).is_some());
    }

    #[test]
    fn the_table_is_bounded() {
        let s = Strikes::new(0, Duration::from_secs(1));
        let t = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 100) {
            s.fail(IpAddr::V4(i.into()), t + Duration::from_nanos(u64::from(i)));
        }
        assert_eq!(s.len(), MAX_ADDRESSES);
        // The most recent is kept, the oldest went.
        let last = IpAddr::V4((MAX_ADDRESSES as u32 + 99).into());
        assert!(s.locked(last, t).is_some());
        assert!(s.locked(IpAddr::V4(0.into()), t).is_none());
    }
}
