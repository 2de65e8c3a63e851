//! A TCP proxy on 127.0.0.1 that delays each direction by a fixed time, to
//! measure SFTP behind a WAN-like round trip (10 ms each way = 20 ms RTT).
//!
//! Each direction reads whatever arrives, stamps it, and a writer task
//! forwards it once its stamp + delay has passed. The queue between them is
//! bounded (chunks × chunk size), so a fast sender is slowed by TCP
//! backpressure instead of growing memory; the bound is sized well above
//! the bandwidth-delay product of loopback SFTP so it does not cap
//! throughput itself.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bytes read per chunk.
const CHUNK: usize = 64 * 1024;
/// Chunks queued per direction: up to 64 MiB in flight, far above 10 ms of
/// a few hundred MB/s.
const QUEUE: usize = 1024;

/// A running proxy; aborted (listener and all connections) on drop.
pub struct LatencyProxy {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl LatencyProxy {
    /// Listens on 127.0.0.1 (free port) and forwards to `upstream`, adding
    /// `one_way` delay in each direction.
    pub async fn start(upstream: SocketAddr, one_way: Duration) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    break;
                };
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pipe(cr, sw, one_way);
                    let down = pipe(sr, cw, one_way);
                    let _ = tokio::join!(up, down);
                });
                // Reap finished connections so the set does not grow.
                while conns.try_join_next().is_some() {}
            }
            // Dropping the JoinSet aborts open connections.
        });
        Ok(Self { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let reader = async move {
        loop {
            let mut buf = vec![0u8; CHUNK];
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send((Instant::now() + delay, buf)).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, buf)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&buf).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn adds_the_configured_round_trip() -> Result<()> {
        // An echo server behind the proxy: one round trip through it must
        // take at least 2 × one-way delay.
        let echo = TcpListener::bind("127.0.0.1:0").await?;
        let echo_addr = echo.local_addr()?;
        let server = tokio::spawn(async move {
            if let Ok((mut s, _)) = echo.accept().await {
                let mut b = [0u8; 4];
                if s.read_exact(&mut b).await.is_ok() {
                    let _ = s.write_all(&b).await;
                }
            }
        });
        let proxy = LatencyProxy::start(echo_addr, Duration::from_millis(10)).await?;
        let mut c = TcpStream::connect(proxy.addr()).await?;
        let t0 = std::time::Instant::now();
        c.write_all(b"ping").await?;
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await?;
        let rtt = t0.elapsed();
        assert_eq!(&b, b"ping");
        assert!(rtt >= Duration::from_millis(20), "rtt {rtt:?}");
        assert!(rtt < Duration::from_millis(200), "rtt {rtt:?}");
        server.abort();
        Ok(())
    }
}
