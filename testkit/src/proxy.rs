//! A TCP proxy in front of a server that cuts every live connection on demand, or after
//! every so many forwarded bytes, as a network failure would, and that can hold the
//! client's bytes back past a point (so that a test acts at a known place of a transfer).
//! Used by the fault and restart tests, the heap tests and the profiling runner.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A TCP proxy in front of a server. New connections are accepted after a cut.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

struct State {
    /// Cancelled to cut the connections open now; replaced after each cut.
    cut: std::sync::Mutex<CancellationToken>,
    /// Client-to-server bytes forwarded so far.
    forwarded: AtomicU64,
    /// Client-to-server bytes read so far, each read's range taken atomically, so that
    /// concurrent connections never both miss (or both see) the byte to corrupt.
    read: AtomicU64,
    /// Automatic cuts: one each time `forwarded` passes another `every` bytes, `limit` times.
    every: u64,
    limit: u64,
    cuts: AtomicU64,
    /// Connections accepted so far.
    accepted: AtomicU64,
    /// Client-to-server forwarding waits while `forwarded` is at least this.
    hold: tokio::sync::watch::Sender<u64>,
    /// The client-to-server byte to flip once (`u64::MAX`: none).
    corrupt: AtomicU64,
}

impl State {
    fn cut(&self) {
        let mut token = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        token.cancel();
        *token = CancellationToken::new();
    }

    /// Flips the byte to corrupt if it falls in `buf`, the next bytes to forward.
    fn maybe_corrupt(&self, buf: &mut [u8]) {
        let start = self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        let at = self.corrupt.load(Ordering::Relaxed);
        let Some(k) = at.checked_sub(start).filter(|&k| k < buf.len() as u64) else {
            return;
        };
        let once =
            self.corrupt
                .compare_exchange(at, u64::MAX, Ordering::Relaxed, Ordering::Relaxed);
        if once.is_ok() {
            buf[k as usize] ^= 0xff;
        }
    }

    fn forwarded(&self, n: u64) {
        let before = self.forwarded.fetch_add(n, Ordering::Relaxed);
        if self.every == 0 {
            return;
        }
        let crossed = (before + n) / self.every > before / self.every;
        if crossed && self.cuts.fetch_add(1, Ordering::Relaxed) < self.limit {
            self.cut();
        }
    }
}

impl Proxy {
    /// A proxy that cuts only when asked ([`Proxy::cut`]).
    pub async fn start(target: SocketAddr) -> Proxy {
        Self::cutting(target, 0, 0).await
    }

    /// A proxy that also cuts every connection each time another `every` bytes have gone
    /// from client to server, `times` times in all.
    pub async fn cutting(target: SocketAddr, every: u64, times: u64) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            cut: std::sync::Mutex::new(CancellationToken::new()),
            forwarded: AtomicU64::new(0),
            read: AtomicU64::new(0),
            every,
            limit: times,
            cuts: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            hold: tokio::sync::watch::Sender::new(u64::MAX),
            corrupt: AtomicU64::new(u64::MAX),
        });
        let stop = CancellationToken::new();
        let (st, s) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    () = s.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                st.accepted.fetch_add(1, Ordering::Relaxed);
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let token = st.cut.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let stop = s.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let mut hold = st.hold.subscribe();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        // Checked after every write: a cut must stop this connection at once,
                        // not after the rest of a poll's worth of reads.
                        while !token.is_cancelled() {
                            let open = hold
                                .wait_for(|&l| st.forwarded.load(Ordering::Relaxed) < l)
                                .await
                                .is_ok();
                            if !open {
                                return Ok(());
                            }
                            let n = cr.read(&mut buf).await?;
                            if n == 0 {
                                return sw.shutdown().await;
                            }
                            st.maybe_corrupt(&mut buf[..n]);
                            sw.write_all(&buf[..n]).await?;
                            st.forwarded(n as u64);
                        }
                        Ok(())
                    };
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = sr.read(&mut buf).await?;
                            if n == 0 {
                                return cw.shutdown().await;
                            }
                            cw.write_all(&buf[..n]).await?;
                        }
                    };
                    // The client may be done sending while answers still come; once the
                    // server's side ends (it closed, or died), so does the client's, even
                    // while its bytes are held.
                    let up = async {
                        let _: std::io::Result<()> = up.await;
                        std::future::pending::<()>().await
                    };
                    tokio::select! {
                        () = token.cancelled() => {}
                        () = stop.cancelled() => {}
                        _ = down => {}
                        () = up => {}
                    }
                    // Dropping both halves resets the connections.
                });
            }
        });
        Proxy { addr, state, stop }
    }

    /// Drops every connection that is open now.
    pub async fn cut(&self) {
        self.state.cut();
    }

    /// Stops forwarding client bytes once `bytes` have gone in all (what one read brought
    /// in still goes), until [`Proxy::release`]. New connections are held too.
    pub fn hold_after(&self, bytes: u64) {
        self.state.hold.send_replace(bytes);
    }

    /// Flips one client-to-server byte, the one at offset `at` of everything forwarded (on
    /// whichever connection carries it), as a damaged link that checksums missed would.
    pub fn corrupt_at(&self, at: u64) {
        self.state.corrupt.store(at, Ordering::Relaxed);
    }

    /// Whether the byte of [`Proxy::corrupt_at`] went through.
    pub fn corrupted(&self) -> bool {
        self.state.corrupt.load(Ordering::Relaxed) == u64::MAX
    }

    /// Forwards again after [`Proxy::hold_after`].
    pub fn release(&self) {
        self.state.hold.send_replace(u64::MAX);
    }

    /// Waits until forwarding is held (`hold_after`'s count was reached), polling every few
    /// milliseconds; panics after `patience`.
    pub async fn until_held(&self, patience: std::time::Duration) {
        let limit = *self.state.hold.borrow();
        let deadline = tokio::time::Instant::now() + patience;
        while self.forwarded() < limit {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the transfer never reached {limit} bytes (at {})",
                self.forwarded()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Client-to-server bytes forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// Automatic cuts made so far.
    pub fn cuts(&self) -> u64 {
        self.state
            .cuts
            .load(Ordering::Relaxed)
            .min(self.state.limit)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
