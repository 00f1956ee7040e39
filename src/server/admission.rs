//! Who gets in, and how many: the pool of connections still in their handshake (the oldest is
//! closed when it is full), the connection slots taken once authenticated, and the count of
//! connections per source address.
//!
//! A connection costs little before it is authenticated (a socket and a 256-byte frame
//! buffer), and holding one costs an attacker nothing. So handshakes never take a connection
//! slot: idle or slow sockets opened before the handshake fill only their own pool, where a new
//! arrival pushes out the one that has waited longest, and an authenticated sender is never
//! queued behind them.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The admission state of a server.
#[derive(Debug)]
pub(crate) struct Admission {
    max_handshakes: usize,
    max_connections: usize,
    per_address: usize,
    handshakes: Mutex<Handshakes>,
    slots: Arc<Semaphore>,
    addresses: Mutex<HashMap<IpAddr, usize>>,
}

#[derive(Debug, Default)]
struct Handshakes {
    next: u64,
    /// Connections in their handshake, oldest first, with the token that closes each.
    waiting: BTreeMap<u64, CancellationToken>,
}

/// A connection in its handshake. Its place in the pool is given back when this is dropped;
/// `pushed_out` is cancelled when a newer connection takes its place.
#[derive(Debug)]
pub(crate) struct Handshaking {
    admission: Arc<Admission>,
    seq: u64,
    pub(crate) pushed_out: CancellationToken,
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.admission
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .waiting
            .remove(&self.seq);
    }
}

/// An authenticated connection's slot, counted against its address until dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    address: Option<IpAddr>,
    /// `None` only while waiting for a slot.
    slot: Option<OwnedSemaphorePermit>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.uncount(self.address);
    }
}

/// Why an authenticated connection was not let in; said to the peer with the limit's code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error(
        "{ip} has {limit} connections open to this receiver already (serve's \
         --max-connections-per-address raises the limit)"
    )]
    Address { ip: IpAddr, limit: usize },
    #[error(
        "this receiver serves {limit} connections at once and none came free within {waited:?} \
         (serve's --max-connections raises the limit)"
    )]
    Full { limit: usize, waited: Duration },
    #[error(
        "this receiver holds {limit} transfers at once (serve's --max-sessions raises the limit)"
    )]
    Sessions { limit: usize },
    #[error(
        "{ip} has {limit} transfers open on this receiver already (serve's \
         --max-sessions-per-address raises the limit)"
    )]
    AddressSessions { ip: IpAddr, limit: usize },
}

impl Admission {
    /// Admission for up to `max_connections` authenticated connections in all and
    /// `per_address` from one address, with `max_handshakes` connections in their handshake.
    pub(crate) fn new(max_handshakes: usize, max_connections: usize, per_address: usize) -> Self {
        let max_connections = max_connections.max(1);
        Admission {
            max_handshakes: max_handshakes.max(1),
            max_connections,
            per_address: per_address.max(1),
            handshakes: Mutex::default(),
            slots: Arc::new(Semaphore::new(max_connections)),
            addresses: Mutex::default(),
        }
    }

    /// A place in the handshake pool for a connection just accepted; when the pool is full,
    /// the connection that has waited longest is told to close.
    pub(crate) fn handshaking(self: &Arc<Self>) -> Handshaking {
        let pushed_out = CancellationToken::new();
        let mut hs = self
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while hs.waiting.len() >= self.max_handshakes {
            if let Some((_, oldest)) = hs.waiting.pop_first() {
                oldest.cancel();
            }
        }
        let seq = hs.next;
        hs.next += 1;
        hs.waiting.insert(seq, pushed_out.clone());
        Handshaking {
            admission: Arc::clone(self),
            seq,
            pushed_out,
        }
    }

    /// Connections in their handshake now.
    pub(crate) fn handshakes(&self) -> usize {
        self.handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .waiting
            .len()
    }

    /// A slot for an authenticated connection from `peer`: refused at once when its address
    /// has `per_address` connections already, or after `wait` when every slot stays taken.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        peer: Option<SocketAddr>,
        wait: Duration,
    ) -> Result<Admitted, Refused> {
        let address = peer.map(|p| canonical(p.ip()));
        if let Some(ip) = address {
            let mut map = self
                .addresses
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = map.entry(ip).or_insert(0);
            if *n >= self.per_address {
                return Err(Refused::Address {
                    ip,
                    limit: self.per_address,
                });
            }
            *n += 1;
        }
        // Counted from here: dropped (refused, or the wait given up), this gives it back.
        let mut admitted = Admitted {
            admission: Arc::clone(self),
            address,
            slot: None,
        };
        let slot = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let waited = tokio::time::timeout(wait, Arc::clone(&self.slots).acquire_owned());
                match waited.await {
                    Ok(Ok(slot)) => slot,
                    _ => {
                        return Err(Refused::Full {
                            limit: self.max_connections,
                            waited: wait,
                        })
                    }
                }
            }
        };
        admitted.slot = Some(slot);
        Ok(admitted)
    }

    fn uncount(&self, address: Option<IpAddr>) {
        let Some(ip) = address else { return };
        let mut map = self
            .addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
                let len = map.len();
                if len <= map.capacity() / 4 {
                    map.shrink_to(len * 2);
                }
            }
        }
    }
}

/// An IPv4 address seen through an IPv6 socket counts as the IPv4 address it is.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 1000))
    }

    #[test]
    fn a_full_handshake_pool_pushes_out_the_oldest() {
        let adm = Arc::new(Admission::new(2, 4, 4));
        let a = adm.handshaking();
        let b = adm.handshaking();
        assert!(!a.pushed_out.is_cancelled());
        let c = adm.handshaking();
        assert!(a.pushed_out.is_cancelled());
        assert!(!b.pushed_out.is_cancelled() && !c.pushed_out.is_cancelled());
        assert_eq!(adm.handshakes(), 2);
        drop((a, b, c));
        assert_eq!(adm.handshakes(), 0);
    }

    #[tokio::test]
    async fn connections_are_counted_per_address_and_given_back() {
        let adm = Arc::new(Admission::new(8, 8, 2));
        let w = Duration::from_millis(1);
        let one = adm.admit(peer("10.0.0.1"), w).await.unwrap();
        let _two = adm.admit(peer("::ffff:10.0.0.1"), w).await.unwrap();
        let third = adm.admit(peer("10.0.0.1"), w).await.unwrap_err();
        assert!(third.to_string().contains("--max-connections-per-address"));
        let _other = adm.admit(peer("10.0.0.2"), w).await.unwrap();
        drop(one);
        adm.admit(peer("10.0.0.1"), w).await.unwrap();
    }

    #[tokio::test]
    async fn with_every_slot_taken_a_connection_is_refused_after_its_wait() {
        let adm = Arc::new(Admission::new(8, 1, 8));
        let w = Duration::from_millis(1);
        let held = adm.admit(peer("10.0.0.1"), w).await.unwrap();
        let refused = adm.admit(peer("10.0.0.2"), w).await.unwrap_err();
        assert!(refused.to_string().contains("--max-connections "));
        // Its address was given back with the refusal.
        assert!(adm
            .addresses
            .lock()
            .unwrap()
            .get(&"10.0.0.2".parse().unwrap())
            .is_none());
        drop(held);
        adm.admit(peer("10.0.0.2"), w).await.unwrap();
    }
}
