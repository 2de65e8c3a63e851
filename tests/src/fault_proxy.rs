//! A TCP proxy for network-fault tests: forwards 127.0.0.1:<free port> to an
//! upstream (sshd, the emulator) and, when armed, cuts every open
//! connection once a number of bytes has flowed through it (a dropped link
//! in the middle of a transfer). Connections made after the cut pass
//! normally, as after a network blip.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy; aborted (listener and all connections) on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    task: JoinHandle<()>,
    /// Bytes (both directions, all connections) still allowed before the
    /// cut; `u64::MAX` = not armed.
    budget: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let budget = Arc::new(AtomicU64::new(u64::MAX));
        let cuts = Arc::new(AtomicU64::new(0));
        let (cut_tx, _) = watch::channel(0u64);
        let cut_tx = Arc::new(cut_tx);
        let (b, c) = (budget.clone(), cuts.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    break;
                };
                let (b, c, tx) = (b.clone(), c.clone(), cut_tx.clone());
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let mut cut = tx.subscribe();
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pump(cr, sw, b.clone(), c.clone(), tx.clone()) => {}
                        _ = pump(sr, cw, b, c, tx) => {}
                        _ = cut.changed() => {}
                    }
                    // Dropping both halves resets the link.
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            addr,
            task,
            budget,
            cuts,
        })
    }

    /// Cuts every open connection once `bytes` more have passed.
    pub fn cut_after(&self, bytes: u64) {
        self.budget.store(bytes.max(1), Ordering::SeqCst);
    }

    /// How many cuts happened.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::SeqCst)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// Forwards one direction until EOF, an error or the cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    budget: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
    cut: Arc<watch::Sender<u64>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let left = budget.load(Ordering::SeqCst);
        if left != u64::MAX {
            if left <= n as u64 {
                // The cut: this and every other open connection.
                budget.store(u64::MAX, Ordering::SeqCst);
                cuts.fetch_add(1, Ordering::SeqCst);
                cut.send_modify(|g| *g += 1);
                return;
            }
            budget.fetch_sub(n as u64, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
