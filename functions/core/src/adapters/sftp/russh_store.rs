//! The `russh` adapter of the `FileStore` port (secret field
//! `"client": "russh"`): russh for SSH, our own SFTP v3 client
//! (`proto.rs`) on its channels.
//!
//! russh is async and pure Rust (aws-lc-rs crypto), so there are no session
//! threads: a small pool of SSH connections, each with one SFTP channel that
//! carries many requests at once. Reads and writes keep a window of requests
//! in flight (up to the server's `limits@openssh.com` sizes), which is what
//! OpenSSH's own client does and what libssh2 only does within one call.
//!
//! Differences from the ssh2 adapter:
//! - an overwriting rename uses `posix-rename@openssh.com` when the server
//!   offers it (atomic, no window where the target is missing);
//! - on a server whose plain rename replaces existing targets (see
//!   `super::RenameProbe`), a no-replace rename is made with
//!   `hardlink@openssh.com` + remove where offered (link(2) refuses an
//!   existing target); ssh2 can only refuse there.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{cipher, client, kex, mac};
use secrecy::ExposeSecret;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::proto::{self, Attrs, SftpChannel, SftpError};
use super::settings::{SftpAuth, SftpSettings};
use super::{MkdirStep, RenameProbe};
use crate::domain::paths::{RemotePath, RemoteRoot};
use crate::ports::file_store::{
    DirEntry, EntryKind, FileMeta, FileStore, FileStoreError, PageStream, PutReceipt, ReadHandle,
    RenameMode,
};

/// Largest read/write payload asked for: OpenSSH's sftp-server limit
/// (255 KiB), used when the server does not announce its own limits.
const MAX_IO: u64 = 255 * 1024;
/// The SFTP v3 guarantee, for servers without `limits@openssh.com`.
const SAFE_IO: u64 = 32 * 1024;
/// Requests in flight per transfer: 16 × 255 KiB ≈ 4 MiB, enough to fill a
/// 20 ms round trip at ≈ 200 MB/s. Writes keep this many per channel:
/// OpenSSH's sshd grants a 2 MiB window per channel, so more would only
/// queue on our side (large puts to distant servers use several channels,
/// see [`parallel_write`]). Reads go deeper there, see [`reads_in_flight`].
const IO_IN_FLIGHT: usize = 16;
/// SFTP channels a large put to a distant server is spread over (sshd's
/// default `MaxSessions` is 10 per connection).
const PARALLEL_WRITERS: usize = 3;
/// Round trip from which a large put uses several channels.
const PARALLEL_WRITE_MIN_RTT: Duration = Duration::from_millis(5);
/// Body size from which a put to a distant server uses several channels.
const PARALLEL_WRITE_MIN_BYTES: u64 = 64 * 1024 * 1024;
/// Our channel window (what the server may send before we acknowledge).
const WINDOW: u32 = 16 * 1024 * 1024;
/// The rate the read pipeline is sized for: bytes in flight = round trip ×
/// this, between `IO_IN_FLIGHT` requests and our window.
const READ_TARGET_BYTES_PER_SEC: f64 = 800e6;
/// Never more outstanding requests than OpenSSH's own client sends (its
/// `-R` default), so servers tuned for it are not surprised.
const MAX_READS_IN_FLIGHT: usize = 64;

/// Read requests to keep in flight for a server `rtt` away with reads of
/// `read_len` bytes: enough for [`READ_TARGET_BYTES_PER_SEC`] (a 20 ms WAN
/// link gets 16 MiB in flight), never fewer than `IO_IN_FLIGHT`, never more
/// than fits in our window or than `MAX_READS_IN_FLIGHT`. Memory follows:
/// up to the window per transfer on distant servers, 4 MiB on near ones.
fn reads_in_flight(rtt: Duration, read_len: u32) -> usize {
    let len = f64::from(read_len.max(1));
    let want = (rtt.as_secs_f64() * READ_TARGET_BYTES_PER_SEC / len).ceil() as usize;
    let cap = (WINDOW as usize / read_len.max(1) as usize).clamp(IO_IN_FLIGHT, MAX_READS_IN_FLIGHT);
    want.clamp(IO_IN_FLIGHT, cap)
}
/// Chunks buffered between a read's pump task and its consumer.
const BODY_CHANNEL: usize = 8;
/// Entries per listing page handed to the caller.
const LIST_PAGE: usize = 1000;

/// AES-GCM and chacha20-poly1305 are AEAD (no separate MAC) and fast in
/// aws-lc; CTR with an EtM SHA-2 MAC for servers without them. No CBC.
const CIPHERS: &[cipher::Name] = &[
    cipher::AES_128_GCM,
    cipher::AES_256_GCM,
    cipher::CHACHA20_POLY1305,
    cipher::AES_128_CTR,
    cipher::AES_256_CTR,
    cipher::AES_192_CTR,
];
const MACS: &[mac::Name] = &[
    mac::HMAC_SHA256_ETM,
    mac::HMAC_SHA512_ETM,
    mac::HMAC_SHA256,
    mac::HMAC_SHA512,
];
/// Modern KEX only, plus the extension markers (strict KEX against
/// Terrapin, ext-info).
const KEX: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::ECDH_SHA2_NISTP256,
    kex::ECDH_SHA2_NISTP384,
    kex::ECDH_SHA2_NISTP521,
    kex::DH_G16_SHA512,
    kex::DH_G18_SHA512,
    kex::DH_GEX_SHA256,
    kex::DH_G14_SHA256,
    kex::EXTENSION_SUPPORT_AS_CLIENT,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
];

fn preferred() -> russh::Preferred {
    use russh::keys::{Algorithm, EcdsaCurve};
    russh::Preferred {
        kex: Cow::Borrowed(KEX),
        // No `ssh-rsa` (SHA-1) or DSA host keys.
        key: Cow::Owned(vec![
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP384,
            },
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP521,
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha256),
            },
        ]),
        cipher: Cow::Borrowed(CIPHERS),
        mac: Cow::Borrowed(MACS),
        ..russh::Preferred::default()
    }
}

/// Checks the host key against the pins during the key exchange, before
/// any credential is sent; remembers what was presented for the error.
struct PinCheck {
    pins: Vec<String>,
    presented: Arc<std::sync::Mutex<Option<String>>>,
}

impl client::Handler for PinCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let fp = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.fingerprint(HashAlg::Sha256).to_string()
            }
            // Certificates are never requested (no `host_key_certificates`).
            PublicKeyOrCertificate::Certificate(_) => "a host certificate".to_owned(),
        };
        let ok = self.pins.contains(&fp);
        if let Ok(mut slot) = self.presented.lock() {
            *slot = Some(fp);
        }
        Ok(ok)
    }
}

/// One authenticated SSH connection with its SFTP channel.
struct Conn {
    sftp: SftpChannel,
    handle: client::Handle<PinCheck>,
    read_len: u32,
    /// The round trip measured at connect (sizes read pipelines and
    /// decides on parallel puts).
    rtt: Duration,
    write_len: usize,
    posix_rename: bool,
    fsync: bool,
    hardlink: bool,
    last_used: std::sync::Mutex<Instant>,
}

impl Conn {
    fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or(Duration::MAX)
    }
}

fn map_err(op: &'static str, path: &RemotePath, e: &SftpError) -> FileStoreError {
    let p = path.to_string();
    let reason = e.to_string();
    match e {
        SftpError::Status { code, .. } => match *code {
            proto::FX_NO_SUCH_FILE | proto::FX_NO_SUCH_PATH => FileStoreError::NotFound { path: p },
            proto::FX_PERMISSION_DENIED => FileStoreError::PermissionDenied { path: p },
            proto::FX_FILE_ALREADY_EXISTS => FileStoreError::AlreadyExists { path: p },
            proto::FX_NO_CONNECTION | proto::FX_CONNECTION_LOST => FileStoreError::Transient {
                op,
                path: p,
                reason,
            },
            // Failure, unsupported and codes of later drafts (or none we
            // know): a refusal of this request; the session goes on.
            _ => FileStoreError::Failed {
                op,
                path: p,
                reason,
            },
        },
        SftpError::Timeout | SftpError::Closed(_) | SftpError::Protocol(_) => {
            FileStoreError::Transient {
                op,
                path: p,
                reason,
            }
        }
    }
}

fn meta_of(a: &Attrs) -> FileMeta {
    let kind = match a.permissions.map(|p| p & 0o170000) {
        Some(0o100000) => EntryKind::File,
        Some(0o040000) => EntryKind::Dir,
        Some(0o120000) => EntryKind::Symlink,
        _ => EntryKind::Other,
    };
    FileMeta {
        kind,
        size: a.size,
        mtime: a
            .mtime
            .and_then(|t| DateTime::<Utc>::from_timestamp(i64::from(t), 0)),
    }
}

async fn connect(s: &SftpSettings) -> Result<Conn, FileStoreError> {
    let target = format!("{}:{}", s.host, s.port);
    let transient = |reason: String| FileStoreError::Transient {
        op: "connect",
        path: target.clone(),
        reason,
    };
    let tcp = tokio::time::timeout(
        s.connect_timeout,
        tokio::net::TcpStream::connect((s.host.as_str(), s.port)),
    )
    .await
    .map_err(|_| transient(format!("no connection within {:?}", s.connect_timeout)))?
    .map_err(|e| transient(e.to_string()))?;
    let _ = tcp.set_nodelay(true);

    let config = client::Config {
        preferred: preferred(),
        // Bigger windows and packets than the defaults: fewer window
        // adjustments and per-packet costs on bulk transfers.
        window_size: WINDOW,
        maximum_packet_size: 65535,
        inactivity_timeout: None,
        nodelay: true,
        ..client::Config::default()
    };
    let presented = Arc::new(std::sync::Mutex::new(None));
    let check = PinCheck {
        pins: s
            .host_key_sha256
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
        presented: Arc::clone(&presented),
    };
    let handshake = tokio::time::timeout(
        s.connect_timeout,
        client::connect_stream(Arc::new(config), tcp, check),
    )
    .await
    .map_err(|_| transient(format!("no SSH handshake within {:?}", s.connect_timeout)))?;
    let mut handle = match handshake {
        Ok(h) => h,
        Err(e) => {
            let seen = presented.lock().ok().and_then(|p| p.clone());
            return Err(match (e, seen) {
                (russh::Error::UnknownKey, Some(presented)) => FileStoreError::HostKeyMismatch {
                    host: target,
                    presented,
                },
                (russh::Error::NoCommonAlgo { .. }, _) => FileStoreError::Failed {
                    op: "handshake",
                    path: target,
                    reason: "no common safe algorithm with the server".into(),
                },
                (e, _) => transient(format!("handshake: {e}")),
            });
        }
    };

    let auth = async {
        match &s.auth {
            SftpAuth::Key { pem, passphrase } => {
                let key = russh::keys::decode_secret_key(
                    pem.expose_secret(),
                    passphrase.as_ref().map(|p| p.expose_secret()),
                )
                .map_err(|_| FileStoreError::Auth {
                    host: target.clone(),
                    user: s.username.clone(),
                    reason: "public key authentication: the private key could not be decoded (wrong passphrase or format?)".into(),
                })?;
                let hash = if key.algorithm().is_rsa() {
                    // The server's `server-sig-algs`, else SHA-256 (never SHA-1).
                    Some(
                        handle
                            .best_supported_rsa_hash()
                            .await
                            .ok()
                            .flatten()
                            .flatten()
                            .unwrap_or(HashAlg::Sha256),
                    )
                } else {
                    None
                };
                handle
                    .authenticate_publickey(
                        &s.username,
                        PrivateKeyWithHashAlg::new(Arc::new(key), hash),
                    )
                    .await
                    .map_err(|e| transient(format!("public key authentication: {e}")))
                    .map(|r| (r.success(), "public key authentication"))
            }
            SftpAuth::Password(pw) => handle
                .authenticate_password(&s.username, pw.expose_secret())
                .await
                .map_err(|e| transient(format!("password authentication: {e}")))
                .map(|r| (r.success(), "password authentication")),
        }
    };
    let (ok, what) = tokio::time::timeout(s.connect_timeout, auth)
        .await
        .map_err(|_| {
            transient(format!(
                "no authentication answer within {:?}",
                s.connect_timeout
            ))
        })??;
    if !ok {
        return Err(FileStoreError::Auth {
            host: target,
            user: s.username.clone(),
            reason: format!("{what}: refused by the server"),
        });
    }

    let session = open_session(&handle, s).await?;
    Ok(Conn {
        rtt: session.rtt,
        read_len: session.read_len,
        write_len: session.write_len,
        posix_rename: session.posix_rename,
        fsync: session.fsync,
        hardlink: session.hardlink,
        sftp: session.sftp,
        handle,
        last_used: std::sync::Mutex::new(Instant::now()),
    })
}

/// An SFTP session on its own channel of an SSH connection.
struct Session {
    sftp: SftpChannel,
    /// The version exchange's round trip.
    rtt: Duration,
    read_len: u32,
    write_len: usize,
    posix_rename: bool,
    fsync: bool,
    hardlink: bool,
}

/// Opens a channel on `handle`, starts the `sftp` subsystem on it and
/// negotiates (version, extensions, limits).
async fn open_session(
    handle: &client::Handle<PinCheck>,
    s: &SftpSettings,
) -> Result<Session, FileStoreError> {
    let transient = |reason: String| FileStoreError::Transient {
        op: "connect",
        path: format!("{}:{}", s.host, s.port),
        reason,
    };
    let open = async {
        let ch = handle.channel_open_session().await?;
        ch.request_subsystem(true, "sftp").await?;
        Ok::<_, russh::Error>(ch)
    };
    let ch = tokio::time::timeout(s.connect_timeout, open)
        .await
        .map_err(|_| transient("opening the sftp subsystem timed out".into()))?
        .map_err(|e| transient(format!("opening the sftp subsystem: {e}")))?;
    let here = RemoteRoot::parse("/")
        .map_err(|e| transient(e.to_string()))?
        .path();
    // The version exchange is one round trip: it sizes the read pipeline.
    let t0 = Instant::now();
    let sftp = SftpChannel::start(ch.into_stream(), s.io_timeout.max(Duration::from_secs(1)))
        .await
        .map_err(|e| map_err("init", &here, &e))?;
    let rtt = t0.elapsed();
    let (mut read_len, mut write_len) = (SAFE_IO, SAFE_IO);
    if sftp.has_extension("limits@openssh.com", "1") {
        let l = sftp
            .limits()
            .await
            .map_err(|e| map_err("limits", &here, &e))?;
        let capped = |n: u64| if n == 0 { MAX_IO } else { n.min(MAX_IO) };
        read_len = capped(l.max_read);
        write_len = capped(l.max_write);
    }
    Ok(Session {
        rtt,
        read_len: read_len as u32,
        write_len: write_len as usize,
        posix_rename: sftp.has_extension("posix-rename@openssh.com", "1"),
        fsync: sftp.has_extension("fsync@openssh.com", "1"),
        hardlink: sftp.has_extension("hardlink@openssh.com", "1"),
        sftp,
    })
}

/// The russh-backed `FileStore`: up to `max_sessions` connections, opened
/// lazily and replaced after a connection failure.
pub struct RusshStore {
    settings: Arc<SftpSettings>,
    slots: Vec<Mutex<Option<Arc<Conn>>>>,
    next: AtomicUsize,
    rename_probe: super::ProbeCache,
}

impl std::fmt::Debug for RusshStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RusshStore")
            .field("host", &self.settings.host)
            .field("port", &self.settings.port)
            .field("root", &self.settings.root)
            .finish_non_exhaustive()
    }
}

fn breaks_connection(e: &FileStoreError) -> bool {
    matches!(e, FileStoreError::Transient { .. })
}

impl RusshStore {
    pub fn new(settings: SftpSettings) -> Self {
        let n = settings.max_sessions.max(1);
        Self {
            settings: Arc::new(settings),
            slots: (0..n).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            rename_probe: super::ProbeCache::default(),
        }
    }

    /// A live connection from the pool and its slot; `fresh`
    /// tells whether it was just opened.
    ///
    /// Connections are opened only as concurrency needs them: an idle live
    /// connection is reused first (one SSH connection carries many SFTP
    /// requests), then an empty slot gets a new one, and only when every
    /// slot is busy do operations share the least busy connection. "Busy"
    /// is the number of operations and streams holding the connection.
    async fn conn(&self) -> Result<(usize, Arc<Conn>, bool), FileStoreError> {
        let mut empty = None;
        let mut least: Option<(usize, usize)> = None;
        for (i, slot) in self.slots.iter().enumerate() {
            // A slot being connected right now is skipped, not waited for.
            let Ok(guard) = slot.try_lock() else { continue };
            match guard.as_ref() {
                Some(c) if !c.handle.is_closed() && !c.sftp.is_closed() => {
                    let users = Arc::strong_count(c) - 1;
                    if users == 0 {
                        return Ok((i, Arc::clone(c), false));
                    }
                    if least.is_none_or(|(_, u)| users < u) {
                        least = Some((i, users));
                    }
                }
                _ => {
                    if empty.is_none() {
                        empty = Some(i);
                    }
                }
            }
        }
        let i = match (empty, least) {
            (Some(i), _) => i,
            (None, Some((i, _))) => i,
            (None, None) => self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len(),
        };
        let mut slot = self.slots[i].lock().await;
        if let Some(c) = slot.as_ref()
            && !c.handle.is_closed()
            && !c.sftp.is_closed()
        {
            return Ok((i, Arc::clone(c), false));
        }
        let c = Arc::new(connect(&self.settings).await?);
        *slot = Some(Arc::clone(&c));
        Ok((i, c, true))
    }

    /// Drops `c` from its slot after a failure that leaves it suspect.
    async fn discard(&self, i: usize, c: &Arc<Conn>) {
        let mut slot = self.slots[i].lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, c)) {
            *slot = None;
        }
    }

    /// Runs `f` on a pooled connection. A transient failure drops the
    /// connection; an `idempotent` operation that failed so on a reused
    /// connection (which may have died while idle, e.g. across a Lambda
    /// freeze) is retried once on a fresh one. A connection idle for longer
    /// than `idle_probe_after` is probed before a non-idempotent operation.
    async fn run<T, F, Fut>(&self, idempotent: bool, f: F) -> Result<T, FileStoreError>
    where
        F: Fn(Arc<Conn>) -> Fut,
        Fut: std::future::Future<Output = Result<T, FileStoreError>>,
    {
        let (i, mut c, mut fresh) = self.conn().await?;
        if !fresh && !idempotent && c.idle_for() >= self.settings.idle_probe_after {
            let root = self.settings.root.path();
            if c.sftp.realpath(b".").await.is_err() {
                tracing::debug!(dir = %root, "replacing an SFTP connection that died while idle");
                self.discard(i, &c).await;
                let (_, c2, _) = self.conn().await?;
                c = c2;
                fresh = true;
            }
        }
        let r = f(Arc::clone(&c)).await;
        c.touch();
        match r {
            Err(e) if breaks_connection(&e) => {
                self.discard(i, &c).await;
                if idempotent && !fresh {
                    tracing::debug!(error = %e, "retrying on a fresh SFTP connection");
                    let (_, c2, _) = self.conn().await?;
                    let r = f(Arc::clone(&c2)).await;
                    c2.touch();
                    return r;
                }
                Err(e)
            }
            other => other,
        }
    }

    fn check_within(&self, p: &RemotePath) -> Result<(), FileStoreError> {
        self.settings.root.resolve_bytes(p.as_bytes())?;
        Ok(())
    }
}

async fn stat_on(c: &Conn, path: &RemotePath) -> Result<FileMeta, FileStoreError> {
    c.sftp
        .stat(path.as_bytes())
        .await
        .map(|a| meta_of(&a))
        .map_err(|e| map_err("stat", path, &e))
}

async fn try_stat_on(c: &Conn, path: &RemotePath) -> Result<Option<FileMeta>, FileStoreError> {
    match stat_on(c, path).await {
        Ok(m) => Ok(Some(m)),
        Err(FileStoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Tells whether the server's plain rename replaces an existing target:
/// two probe dot-files in `dir`, one renamed onto the other.
async fn probe_rename_on(c: &Conn, dir: &RemotePath) -> Result<RenameProbe, FileStoreError> {
    let (a, b) = super::probe_paths(dir)?;
    for (p, byte) in [(&a, b"a"), (&b, b"b")] {
        let h = c
            .sftp
            .open(
                p.as_bytes(),
                proto::OPEN_WRITE | proto::OPEN_CREATE | proto::OPEN_TRUNCATE,
                &Attrs {
                    permissions: Some(0o600),
                    ..Attrs::default()
                },
            )
            .await
            .map_err(|e| map_err("probe", p, &e))?;
        let w = async { c.sftp.send_write(&h, 0, byte).await?.ok().await };
        let written = w.await;
        let closed = c.sftp.close(&h).await;
        written.and(closed).map_err(|e| map_err("probe", p, &e))?;
    }
    let r = match c.sftp.rename(a.as_bytes(), b.as_bytes()).await {
        Ok(()) => RenameProbe::Replaces,
        Err(_) => RenameProbe::Refuses,
    };
    for p in [&a, &b] {
        if let Err(e) = c.sftp.remove(p.as_bytes()).await
            && e.status() != Some(proto::FX_NO_SUCH_FILE)
        {
            tracing::warn!(path = %p, error = %e, "could not remove a rename probe file");
        }
    }
    Ok(r)
}

/// Plain SFTP rename: OpenSSH implements it as link()+unlink(), so it
/// fails when the target exists (the claim primitive). Only called once
/// the probe found that the server refuses.
async fn rename_no_replace(
    c: &Conn,
    from: &RemotePath,
    to: &RemotePath,
) -> Result<(), FileStoreError> {
    match c.sftp.rename(from.as_bytes(), to.as_bytes()).await {
        Ok(()) => Ok(()),
        Err(e) => refused_rename(c, from, to, &e).await,
    }
}

/// What a refused rename (or link) from `from` to `to` means.
async fn refused_rename(
    c: &Conn,
    from: &RemotePath,
    to: &RemotePath,
    e: &SftpError,
) -> Result<(), FileStoreError> {
    match e.status() {
        Some(proto::FX_NO_SUCH_FILE | proto::FX_NO_SUCH_PATH) => Err(FileStoreError::NotFound {
            path: from.to_string(),
        }),
        Some(proto::FX_FILE_ALREADY_EXISTS) => Err(FileStoreError::AlreadyExists {
            path: to.to_string(),
        }),
        // SFTP v3 has no "exists" status; OpenSSH answers FAILURE.
        Some(_) => {
            if try_stat_on(c, to).await?.is_some() {
                Err(FileStoreError::AlreadyExists {
                    path: to.to_string(),
                })
            } else if try_stat_on(c, from).await?.is_none() {
                Err(FileStoreError::NotFound {
                    path: from.to_string(),
                })
            } else {
                Err(map_err("rename", from, e))
            }
        }
        None => Err(map_err("rename", from, e)),
    }
}

/// A no-replace rename on a server whose rename replaces: link(2) through
/// `hardlink@openssh.com` refuses an existing target, then the old name
/// goes. Between the two a second name exists; if the remove fails, the
/// link is undone so the rename did not happen.
async fn rename_by_link(
    c: &Conn,
    from: &RemotePath,
    to: &RemotePath,
) -> Result<(), FileStoreError> {
    if let Err(e) = c.sftp.hardlink(from.as_bytes(), to.as_bytes()).await {
        return refused_rename(c, from, to, &e).await;
    }
    if let Err(e) = c.sftp.remove(from.as_bytes()).await {
        if e.status() == Some(proto::FX_NO_SUCH_FILE) {
            // Someone else removed (or renamed) the source meanwhile: our
            // link holds the content, which is what a rename would leave.
            return Ok(());
        }
        let _ = c.sftp.remove(to.as_bytes()).await;
        return Err(map_err("rename", from, &e));
    }
    Ok(())
}

/// Overwriting rename: `posix-rename@openssh.com` (atomic) where offered;
/// otherwise move the old target aside, rename, and delete the old one.
async fn rename_replace(
    c: &Conn,
    from: &RemotePath,
    to: &RemotePath,
) -> Result<(), FileStoreError> {
    if c.posix_rename {
        return match c.sftp.posix_rename(from.as_bytes(), to.as_bytes()).await {
            Ok(()) => Ok(()),
            Err(e) if e.status() == Some(proto::FX_NO_SUCH_FILE) => Err(FileStoreError::NotFound {
                path: from.to_string(),
            }),
            Err(e) => Err(map_err("rename", from, &e)),
        };
    }
    match c.sftp.rename(from.as_bytes(), to.as_bytes()).await {
        Ok(()) => return Ok(()),
        Err(e) => match refused_rename(c, from, to, &e).await {
            Err(FileStoreError::AlreadyExists { .. }) => {}
            other => return other,
        },
    }
    let aside = super::temp_sibling(to, "old")?;
    rename_no_replace(c, to, &aside).await?;
    if let Err(e) = rename_no_replace(c, from, to).await {
        let _ = rename_no_replace(c, &aside, to).await;
        return Err(e);
    }
    if let Err(e) = c.sftp.remove(aside.as_bytes()).await {
        tracing::warn!(path = %aside, error = %e, "could not remove replaced file");
    }
    Ok(())
}

impl RusshStore {
    /// What this server's rename does to an existing target, probed once
    /// in `dir` on `c`.
    async fn rename_probe(
        &self,
        c: &Conn,
        dir: &RemotePath,
    ) -> Result<RenameProbe, FileStoreError> {
        self.rename_probe
            .get_or_probe(|| probe_rename_on(c, dir))
            .await
    }

    /// A no-replace rename: plain where the server refuses existing
    /// targets, by hard link where it replaces them and offers links,
    /// refused otherwise.
    async fn rename_no_replace_safe(
        &self,
        c: &Conn,
        from: &RemotePath,
        to: &RemotePath,
    ) -> Result<(), FileStoreError> {
        let dir = to.parent().ok_or_else(|| FileStoreError::WrongKind {
            path: to.to_string(),
            kind: EntryKind::Dir,
        })?;
        match self.rename_probe(c, &dir).await? {
            RenameProbe::Refuses => rename_no_replace(c, from, to).await,
            RenameProbe::Replaces if c.hardlink => rename_by_link(c, from, to).await,
            RenameProbe::Replaces => Err(super::rename_replaces(
                "rename",
                to,
                "the server offers no hardlink@openssh.com to do it safely; use a server whose \
                 rename refuses existing targets",
            )),
        }
    }

    async fn rename_on(
        &self,
        c: &Conn,
        from: &RemotePath,
        to: &RemotePath,
        mode: RenameMode,
    ) -> Result<(), FileStoreError> {
        match mode {
            RenameMode::NoReplace => self.rename_no_replace_safe(c, from, to).await,
            RenameMode::Replace => rename_replace(c, from, to).await,
        }
    }
}

/// Streams `handle` into `tx` with [`reads_in_flight`] reads outstanding.
/// Returns Ok when the file ends or the receiver goes away.
async fn pump_read(
    c: &Conn,
    path: &RemotePath,
    handle: &[u8],
    tx: &mpsc::Sender<Result<Bytes, FileStoreError>>,
) -> Result<(), FileStoreError> {
    let len = c.read_len;
    let err = |e: SftpError| map_err("read", path, &e);
    let mut next = 0u64;
    let mut inflight = VecDeque::new();
    for _ in 0..reads_in_flight(c.rtt, len) {
        inflight.push_back((
            next,
            len,
            c.sftp.send_read(handle, next, len).await.map_err(err)?,
        ));
        next += u64::from(len);
    }
    while let Some((off, asked, pending)) = inflight.pop_front() {
        let Some(data) = pending.data().await.map_err(err)? else {
            // Later requests lie past the end too.
            return Ok(());
        };
        let got = data.len() as u64;
        if tx.send(Ok(data)).await.is_err() {
            return Ok(());
        }
        // A short read need not mean the end (servers may return less);
        // fill the gap before the next, already requested, block.
        let mut pos = off + got;
        let end = off + u64::from(asked);
        while pos < end {
            let p = c
                .sftp
                .send_read(handle, pos, (end - pos) as u32)
                .await
                .map_err(err)?;
            match p.data().await.map_err(err)? {
                Some(d) if !d.is_empty() => {
                    pos += d.len() as u64;
                    if tx.send(Ok(d)).await.is_err() {
                        return Ok(());
                    }
                }
                _ => return Ok(()),
            }
        }
        inflight.push_back((
            next,
            len,
            c.sftp.send_read(handle, next, len).await.map_err(err)?,
        ));
        next += u64::from(len);
    }
    Ok(())
}

/// Writes the body to `tmp` with `IO_IN_FLIGHT` writes outstanding, then
/// checks the size, syncs where supported and compares the remote size.
async fn write_tmp(
    c: &Conn,
    settings: &SftpSettings,
    tmp: &RemotePath,
    target: &RemotePath,
    body: &mut crate::ports::file_store::ByteStream,
    expected_len: Option<u64>,
) -> Result<PutReceipt, FileStoreError> {
    let attrs = Attrs {
        permissions: Some(0o644),
        ..Attrs::default()
    };
    let handle = c
        .sftp
        .open(
            tmp.as_bytes(),
            proto::OPEN_WRITE | proto::OPEN_CREATE | proto::OPEN_TRUNCATE,
            &attrs,
        )
        .await
        .map_err(|e| map_err("create", tmp, &e))?;
    let extra = if parallel_write(c.rtt, expected_len) {
        extra_writers(c, settings, tmp).await
    } else {
        Vec::new()
    };
    let mut writers: Vec<(&SftpChannel, &[u8])> = vec![(&c.sftp, &handle[..])];
    writers.extend(extra.iter().map(|(s, h)| (&s.sftp, &h[..])));
    let r = write_body(c, tmp, target, &writers, body, expected_len).await;
    for (s, h) in &extra {
        let _ = s.sftp.close(h).await;
    }
    drop(writers);
    drop(extra);
    let closed = c.sftp.close(&handle).await;
    let receipt = r?;
    closed.map_err(|e| map_err("close", tmp, &e))?;
    Ok(receipt)
}

/// Whether a put goes over `PARALLEL_WRITERS` channels: only to a distant
/// server (where one channel's window, 2 MiB on OpenSSH, caps the rate at
/// window / round trip) and only for a body large enough to repay opening
/// the channels (a few round trips).
fn parallel_write(rtt: Duration, expected_len: Option<u64>) -> bool {
    rtt >= PARALLEL_WRITE_MIN_RTT && expected_len.is_some_and(|n| n >= PARALLEL_WRITE_MIN_BYTES)
}

/// More SFTP sessions on channels of `c`'s connection, each with `tmp`
/// open for writing (created already). Best effort: a server that refuses
/// more channels (sshd's `MaxSessions`) leaves the put on one channel.
async fn extra_writers(
    c: &Conn,
    settings: &SftpSettings,
    tmp: &RemotePath,
) -> Vec<(Session, Bytes)> {
    let open_one = || async {
        let s = open_session(&c.handle, settings).await.ok()?;
        let h = s
            .sftp
            .open(tmp.as_bytes(), proto::OPEN_WRITE, &Attrs::default())
            .await
            .ok()?;
        Some((s, h))
    };
    let opened = futures_util::future::join_all((1..PARALLEL_WRITERS).map(|_| open_one())).await;
    let writers: Vec<_> = opened.into_iter().flatten().collect();
    if writers.len() + 1 < PARALLEL_WRITERS {
        tracing::debug!(
            channels = writers.len() + 1,
            "the server granted fewer SFTP channels than asked for"
        );
    }
    writers
}

/// Blocks go round-robin over `writers` (session, handle of the same open
/// file); the first is `c`'s own session, which also syncs and checks.
async fn write_body(
    c: &Conn,
    tmp: &RemotePath,
    target: &RemotePath,
    writers: &[(&SftpChannel, &[u8])],
    body: &mut crate::ports::file_store::ByteStream,
    expected_len: Option<u64>,
) -> Result<PutReceipt, FileStoreError> {
    let handle = writers[0].1;
    let err = |e: SftpError| map_err("write", tmp, &e);
    let in_flight = IO_IN_FLIGHT * writers.len();
    let mut tally = super::Tally::new(expected_len);
    let mut sent = 0u64;
    let mut turn = 0usize;
    // Sent as soon as a block is full; the replies are awaited oldest
    // first once `in_flight` are outstanding.
    let mut inflight: VecDeque<proto::Pending> = VecDeque::new();
    let mut pending: Vec<u8> = Vec::with_capacity(c.write_len);
    loop {
        let chunk = match body.next().await {
            Some(chunk) => chunk.map_err(|e| FileStoreError::source(target, e))?,
            None => break,
        };
        tally.add(&chunk, target)?;
        let mut rest: &[u8] = &chunk;
        while !rest.is_empty() {
            // Whole blocks straight from the chunk, without a copy.
            let block: &[u8] = if pending.is_empty() && rest.len() >= c.write_len {
                let (b, r) = rest.split_at(c.write_len);
                rest = r;
                b
            } else {
                let take = rest.len().min(c.write_len - pending.len());
                pending.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if pending.len() < c.write_len {
                    continue;
                }
                &pending
            };
            while inflight.len() >= in_flight {
                if let Some(p) = inflight.pop_front() {
                    p.ok().await.map_err(err)?;
                }
            }
            let (sftp, h) = writers[turn % writers.len()];
            turn += 1;
            inflight.push_back(sftp.send_write(h, sent, block).await.map_err(err)?);
            sent += block.len() as u64;
            pending.clear();
        }
    }
    // The tail.
    if !pending.is_empty() {
        let (sftp, h) = writers[turn % writers.len()];
        inflight.push_back(sftp.send_write(h, sent, &pending).await.map_err(err)?);
        sent += pending.len() as u64;
    }
    debug_assert_eq!(sent, tally.size());
    while let Some(p) = inflight.pop_front() {
        p.ok().await.map_err(err)?;
    }
    let (size, sha256) = tally.finish(target)?;
    let synced = if c.fsync {
        c.sftp
            .fsync(handle)
            .await
            .map_err(|e| map_err("fsync", tmp, &e))?;
        true
    } else {
        false
    };
    let remote = c
        .sftp
        .fstat(handle)
        .await
        .map_err(|e| map_err("stat", tmp, &e))?;
    if remote.size != Some(size) {
        return Err(FileStoreError::SizeMismatch {
            path: tmp.to_string(),
            expected: size,
            actual: remote.size.unwrap_or(0),
        });
    }
    Ok(PutReceipt {
        size,
        sha256,
        synced,
    })
}

/// A put's temporary file, removed in the background if the put's future
/// is dropped before it finished (disarmed by taking the option). A put
/// dropped in the middle of sending a request leaves its SFTP channel
/// unusable (half a packet on it); the removal then goes over a fresh SFTP
/// channel of the same SSH connection.
struct RemoveOnDrop(Option<(Arc<Conn>, Arc<SftpSettings>, RemotePath)>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some((c, settings, tmp)) = self.0.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                if !c.sftp.is_closed() {
                    let _ = c.sftp.remove(tmp.as_bytes()).await;
                    return;
                }
                match open_session(&c.handle, &settings).await {
                    Ok(s) => {
                        let _ = s.sftp.remove(tmp.as_bytes()).await;
                    }
                    Err(e) => {
                        tracing::warn!(path = %tmp, error = %e, "could not remove the temporary file of an abandoned put");
                    }
                }
            });
        }
    }
}

#[async_trait]
impl FileStore for RusshStore {
    fn root(&self) -> &RemoteRoot {
        &self.settings.root
    }

    async fn list_pages(&self, dir: &RemotePath) -> Result<PageStream, FileStoreError> {
        self.check_within(dir)?;
        let (c, handle) = self
            .run(true, |c| async move {
                let h = c
                    .sftp
                    .opendir(dir.as_bytes())
                    .await
                    .map_err(|e| map_err("list", dir, &e))?;
                Ok((c, h))
            })
            .await?;
        let (tx, rx) = mpsc::channel(2);
        let dir = dir.clone();
        tokio::spawn(async move {
            let mut page = Vec::with_capacity(LIST_PAGE);
            let result: Result<(), FileStoreError> = async {
                while let Some(names) = c
                    .sftp
                    .readdir(&handle)
                    .await
                    .map_err(|e| map_err("list", &dir, &e))?
                {
                    for f in names {
                        let raw: &[u8] = &f.name;
                        if raw == b"." || raw == b".." {
                            continue;
                        }
                        let display = String::from_utf8_lossy(raw).into_owned();
                        // A server cannot legally send `/` in a name.
                        let Ok(path) = dir.join(raw) else {
                            tracing::warn!(dir = %dir, name = %String::from_utf8_lossy(raw), "skipping unaddressable directory entry");
                            continue;
                        };
                        page.push(DirEntry {
                            name: raw.to_vec(),
                            display_name: display,
                            path,
                            meta: meta_of(&f.attrs),
                        });
                        if page.len() >= LIST_PAGE {
                            let full = std::mem::replace(&mut page, Vec::with_capacity(LIST_PAGE));
                            if tx.send(Ok(full)).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                }
                Ok(())
            }
            .await;
            let _ = c.sftp.close(&handle).await;
            match result {
                Ok(()) if !page.is_empty() => {
                    let _ = tx.send(Ok(page)).await;
                }
                Ok(()) => {}
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn stat(&self, path: &RemotePath) -> Result<FileMeta, FileStoreError> {
        self.check_within(path)?;
        self.run(true, |c| async move { stat_on(&c, path).await })
            .await
    }

    async fn open_read(&self, path: &RemotePath) -> Result<ReadHandle, FileStoreError> {
        self.check_within(path)?;
        let (c, handle, meta) = self
            .run(true, |c| async move {
                let h = c
                    .sftp
                    .open(path.as_bytes(), proto::OPEN_READ, &Attrs::default())
                    .await
                    .map_err(|e| map_err("open", path, &e))?;
                let meta = match c.sftp.fstat(&h).await {
                    Ok(a) => meta_of(&a),
                    Err(e) => {
                        let _ = c.sftp.close(&h).await;
                        return Err(map_err("stat", path, &e));
                    }
                };
                if meta.kind == EntryKind::Dir {
                    let _ = c.sftp.close(&h).await;
                    return Err(FileStoreError::WrongKind {
                        path: path.to_string(),
                        kind: meta.kind,
                    });
                }
                Ok((c, h, meta))
            })
            .await?;
        let (tx, rx) = mpsc::channel(BODY_CHANNEL);
        let p = path.clone();
        tokio::spawn(async move {
            let r = pump_read(&c, &p, &handle, &tx).await;
            let _ = c.sftp.close(&handle).await;
            if let Err(e) = r {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(ReadHandle {
            meta,
            body: Box::pin(ReceiverStream::new(rx)),
        })
    }

    async fn put_atomic(
        &self,
        path: &RemotePath,
        body: crate::ports::file_store::ByteStream,
        expected_len: Option<u64>,
        mode: RenameMode,
    ) -> Result<PutReceipt, FileStoreError> {
        self.check_within(path)?;
        let tmp = super::temp_sibling(path, "part")?;
        // Not retried: the body is a one-shot stream. `run` wants `Fn`, so
        // the body moves through a lock taken once.
        let body = Mutex::new(Some(body));
        self.run(false, |c| {
            let (tmp, body) = (&tmp, &body);
            async move {
                if mode == RenameMode::NoReplace {
                    // Refused before a byte is read where the server's
                    // rename would replace and no safe way exists.
                    let dir = path.parent().ok_or_else(|| FileStoreError::WrongKind {
                        path: path.to_string(),
                        kind: EntryKind::Dir,
                    })?;
                    if self.rename_probe(&c, &dir).await? == RenameProbe::Replaces && !c.hardlink {
                        return Err(super::rename_replaces(
                            "put",
                            path,
                            "the server offers no hardlink@openssh.com to publish it safely; \
                             deliver with overwrite, or use a server whose rename refuses \
                             existing targets",
                        ));
                    }
                }
                let Some(mut body) = body.lock().await.take() else {
                    return Err(FileStoreError::Transient {
                        op: "put",
                        path: path.to_string(),
                        reason: "the upload body was already consumed".into(),
                    });
                };
                // Removes the temporary file if this future is dropped
                // midway (its caller gave up), where no await can clean up.
                let mut guard =
                    RemoveOnDrop(Some((c.clone(), Arc::clone(&self.settings), tmp.clone())));
                let r =
                    match write_tmp(&c, &self.settings, tmp, path, &mut body, expected_len).await {
                        Ok(receipt) => self.rename_on(&c, tmp, path, mode).await.map(|()| receipt),
                        Err(e) => Err(e),
                    };
                let armed = guard.0.take();
                if r.is_err()
                    && let Some((_, _, t)) = armed
                {
                    let _ = c.sftp.remove(t.as_bytes()).await;
                }
                r
            }
        })
        .await
    }

    async fn mkdir_all(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        self.check_within(dir)?;
        // Deepest first, as the ssh2 adapter (see `super::MkdirStep`).
        self.run(true, |c| async move {
            let chain = dir.ancestors_below_root();
            let attrs = Attrs {
                permissions: Some(0o755),
                ..Attrs::default()
            };
            let mut k = chain.len();
            while k > 0 {
                let p = &chain[k - 1];
                let step = match c.sftp.mkdir(p.as_bytes(), &attrs).await {
                    Ok(()) => MkdirStep::Made,
                    Err(e) => {
                        let seen = try_stat_on(&c, p).await?;
                        MkdirStep::after_refusal(p, seen, k == 1, || map_err("mkdir", p, &e))?
                    }
                };
                match step {
                    MkdirStep::Made | MkdirStep::Exists => break,
                    MkdirStep::ParentMissing => k -= 1,
                }
            }
            for p in chain.iter().skip(k) {
                if let Err(e) = c.sftp.mkdir(p.as_bytes(), &attrs).await {
                    // Lost a race with a concurrent mkdir: fine if a dir now.
                    let seen = try_stat_on(&c, p).await?;
                    MkdirStep::after_refusal(p, seen, true, || map_err("mkdir", p, &e))?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        mode: RenameMode,
    ) -> Result<(), FileStoreError> {
        self.check_within(from)?;
        self.check_within(to)?;
        // Not retried: after a lost reply the rename may have happened.
        self.run(false, |c| async move {
            self.rename_on(&c, from, to, mode).await
        })
        .await
    }

    async fn remove(&self, path: &RemotePath) -> Result<(), FileStoreError> {
        self.check_within(path)?;
        self.run(false, |c| async move {
            c.sftp
                .remove(path.as_bytes())
                .await
                .map_err(|e| map_err("remove", path, &e))
        })
        .await
    }

    async fn remove_dir(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        self.check_within(dir)?;
        self.run(false, |c| async move {
            c.sftp
                .rmdir(dir.as_bytes())
                .await
                .map_err(|e| map_err("rmdir", dir, &e))
        })
        .await
    }

    async fn verify_no_replace(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        self.check_within(dir)?;
        let probe = self
            .run(true, |c| async move {
                self.rename_probe(&c, dir).await.map(|p| (p, c.hardlink))
            })
            .await?;
        match probe {
            (RenameProbe::Refuses, _) | (RenameProbe::Replaces, true) => Ok(()),
            (RenameProbe::Replaces, false) => Err(super::rename_replaces(
                "verify",
                dir,
                "the server offers no hardlink@openssh.com to do it safely; use a server whose \
                 rename refuses existing targets",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_pipeline_depth_follows_the_round_trip() {
        let ms = Duration::from_millis;
        let big = MAX_IO as u32;
        // Near servers: the base depth.
        assert_eq!(reads_in_flight(Duration::ZERO, big), IO_IN_FLIGHT);
        assert_eq!(reads_in_flight(ms(2), big), IO_IN_FLIGHT);
        // 10 ms: 8 MB in flight; 20 ms: 16 MB.
        assert_eq!(reads_in_flight(ms(10), big), 31);
        // Far servers: no more than our window holds.
        assert_eq!(reads_in_flight(ms(20), big), 62);
        assert_eq!(reads_in_flight(ms(300), big), 64);
        // Servers limited to 32 KiB reads: as many requests as OpenSSH's
        // client keeps outstanding, no more.
        assert_eq!(reads_in_flight(ms(1), SAFE_IO as u32), 25);
        assert_eq!(reads_in_flight(ms(20), SAFE_IO as u32), MAX_READS_IN_FLIGHT);
    }
}
