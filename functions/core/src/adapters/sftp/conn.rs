//! One blocking ssh2 session and the blocking SFTP operations on it.
//!
//! Everything here runs on a session's own thread (see `mod.rs`); nothing
//! here is async. libssh2 is not safe to share across threads without its
//! internal lock, and the lock would serialise the transfers anyway, so one
//! session belongs to one thread for its whole life.

use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use ssh2::{ErrorCode, FileStat, HashType, MethodType, OpenFlags, OpenType, Session, Sftp};
use tokio::sync::mpsc;

use super::settings::{SftpAuth, SftpSettings};
use crate::domain::paths::RemotePath;
use crate::ports::file_store::{
    DirEntry, EntryKind, FileMeta, FileStoreError, PutReceipt, RenameMode,
};

/// Bytes asked of libssh2 per `read`/`write` call. libssh2 pipelines SFTP
/// requests only within one call, so this sets the requests in flight:
/// 32 KiB calls give ≈ 36 MB/s on loopback, 2 MiB ≈ 260 MB/s (TOOLCHAIN.md).
pub(crate) const IO_BLOCK: usize = 2 * 1024 * 1024;

/// Chunks handed to async code are at least this large (the last may be
/// smaller), so per-chunk overhead downstream stays negligible.
pub(crate) const CHUNK_TARGET: usize = 1024 * 1024;

/// A put at least this large to a server at least [`STRIPED_PUT_MIN_RTT`]
/// away is spread over [`STRIPED_PUT_CONNECTIONS`] connections: one SFTP
/// channel's window (2 MiB on OpenSSH's sshd) caps a connection at about
/// window / round trip (≈ 77 MB/s measured at 20 ms; four connections
/// taking 2 MiB stripes from one queue reach ≈ 140 MB/s there). On
/// loopback the extra connections gained nothing (the cores are the limit),
/// hence the round-trip condition.
const STRIPED_PUT_MIN_BYTES: u64 = 64 * 1024 * 1024;
const STRIPED_PUT_MIN_RTT: Duration = Duration::from_millis(5);
/// This connection and three more (sshd's `MaxStartups` default, 10
/// unauthenticated connections, leaves room).
const STRIPED_PUT_CONNECTIONS: usize = 4;
/// Bytes a connection of a striped put writes in one pipelined call. A
/// striped put holds one stripe per connection (and libssh2 a copy of it
/// while in flight), [`STRIPES_QUEUED`] more and the one being cut: about
/// 22 MiB. 4 MiB stripes were faster (three connections ≈ 125 MB/s) but
/// took the export past its 64 MiB budget.
const STRIPE: usize = 2 * 1024 * 1024;
/// Stripes cut and waiting for a free connection.
const STRIPES_QUEUED: usize = 1;

/// How long the handle close of a failed put may take on its (suspect)
/// session before the session is dropped.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(1);

/// Smallest read buffer, for files that are smaller still (or grew).
const MIN_BLOCK: usize = 32 * 1024;

/// Entries per listing page.
pub(crate) const LIST_PAGE: usize = 1000;

/// Ciphers ordered by measured libssh2 speed (OpenSSL backend): aes-ctr
/// (with an EtM SHA-2 MAC, both in hardware on x86-64 and arm64) and
/// chacha20-poly1305 beat aes-gcm in libssh2, the reverse of OpenSSH.
/// Measured here (1 GiB, loopback, client CPU per GiB): aes128-ctr 3.25 s
/// get / 3.61 s put, chacha20-poly1305 3.39 s / 3.83 s. chacha20 is
/// libssh2's portable C code, so aes128-ctr goes first. CBC, 3DES, arcfour
/// and `none` are left out on purpose.
const CIPHERS: &str = "aes128-ctr,chacha20-poly1305@openssh.com,aes256-ctr,aes192-ctr,\
aes128-gcm@openssh.com,aes256-gcm@openssh.com";
/// Encrypt-then-MAC first; no SHA-1 or MD5 MACs.
const MACS: &str = "hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com,\
hmac-sha2-256,hmac-sha2-512";
/// Modern KEX only (no group1/group14-sha1). libssh2 prepends
/// `ext-info-c,kex-strict-c-v00@openssh.com` to any list set here, so
/// strict KEX (the Terrapin fix) is negotiated with servers that offer it.
const KEX: &str = "curve25519-sha256,curve25519-sha256@libssh.org,\
ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,\
diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,\
diffie-hellman-group-exchange-sha256,diffie-hellman-group14-sha256";
/// No `ssh-rsa` (SHA-1) or DSA host keys.
const HOST_KEYS: &str = "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,\
ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256";

// libssh2 codes we branch on (libssh2.h / libssh2_sftp.h).
const FX_NO_SUCH_FILE: i32 = 2;
const FX_PERMISSION_DENIED: i32 = 3;
const FX_FAILURE: i32 = 4;
const FX_NO_CONNECTION: i32 = 6;
const FX_CONNECTION_LOST: i32 = 7;
const FX_OP_UNSUPPORTED: i32 = 8;
const FX_NO_SUCH_PATH: i32 = 10;
const FX_FILE_ALREADY_EXISTS: i32 = 11;
const ERR_FILE: i32 = -16;
const ERR_AUTHENTICATION_FAILED: i32 = -18;
const ERR_PUBLICKEY_UNVERIFIED: i32 = -19;
const ERR_METHOD_NOT_SUPPORTED: i32 = -33;

fn std_path(p: &RemotePath) -> &Path {
    Path::new(OsStr::from_bytes(p.as_bytes()))
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

/// Maps an ssh2 error of `op` on `path` to the port's error.
pub(crate) fn map_err(op: &'static str, path: &RemotePath, e: &ssh2::Error) -> FileStoreError {
    let path = path.to_string();
    let reason = e.to_string();
    match e.code() {
        ErrorCode::SFTP(FX_NO_SUCH_FILE | FX_NO_SUCH_PATH) => FileStoreError::NotFound { path },
        ErrorCode::SFTP(FX_PERMISSION_DENIED) => FileStoreError::PermissionDenied { path },
        ErrorCode::SFTP(FX_FILE_ALREADY_EXISTS) => FileStoreError::AlreadyExists { path },
        ErrorCode::SFTP(FX_NO_CONNECTION | FX_CONNECTION_LOST) => {
            FileStoreError::Transient { op, path, reason }
        }
        ErrorCode::SFTP(_) => FileStoreError::Failed { op, path, reason },
        // Session-level codes are socket, timeout and protocol failures: the
        // connection is suspect and a fresh one may well succeed.
        ErrorCode::Session(_) => FileStoreError::Transient { op, path, reason },
    }
}

/// Maps an I/O error from ssh2's `Read`/`Write` impls (which keep only the
/// error kind) to the port's error.
fn map_io(op: &'static str, path: &RemotePath, e: &std::io::Error) -> FileStoreError {
    let p = path.to_string();
    match e.kind() {
        std::io::ErrorKind::NotFound => FileStoreError::NotFound { path: p },
        std::io::ErrorKind::PermissionDenied => FileStoreError::PermissionDenied { path: p },
        _ => FileStoreError::Transient {
            op,
            path: p,
            reason: e.to_string(),
        },
    }
}

/// Whether an error means the session should be dropped and reopened.
pub(crate) fn breaks_connection(e: &FileStoreError) -> bool {
    matches!(e, FileStoreError::Transient { .. })
}

pub(crate) fn meta_of(st: &FileStat) -> FileMeta {
    let kind = match st.perm.map(|p| p & 0o170000) {
        Some(0o100000) => EntryKind::File,
        Some(0o040000) => EntryKind::Dir,
        Some(0o120000) => EntryKind::Symlink,
        _ => EntryKind::Other,
    };
    FileMeta {
        kind,
        size: st.size,
        mtime: st
            .mtime
            .and_then(|t| i64::try_from(t).ok())
            .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0)),
    }
}

/// The SHA-256 fingerprint of the server's host key, as OpenSSH prints it.
fn presented_fingerprint(sess: &Session) -> Option<String> {
    sess.host_key_hash(HashType::Sha256).map(|h| {
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(h)
        )
    })
}

/// An authenticated session with its SFTP channel.
pub(crate) struct Conn {
    // Field order matters: the SFTP channel must close before the session.
    sftp: Sftp,
    sess: Session,
    last_used: std::time::Instant,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Polite close; errors are irrelevant, the socket goes either way.
        let _ = self.sess.disconnect(None, "bye", None);
    }
}

/// Opens, verifies and authenticates a session. The host key is checked
/// against the pins right after the key exchange, before any credential is
/// sent; a mismatch fails closed and reports the presented fingerprint.
pub(crate) fn connect(s: &SftpSettings) -> Result<Conn, FileStoreError> {
    let target = format!("{}:{}", s.host, s.port);
    let transient = |reason: String| FileStoreError::Transient {
        op: "connect",
        path: target.clone(),
        reason,
    };
    // Name resolution has no timeout of its own in std; Lambda's resolver is
    // local and fast, and the TCP connect below is bounded.
    let addrs = (s.host.as_str(), s.port)
        .to_socket_addrs()
        .map_err(|e| transient(format!("cannot resolve: {e}")))?;
    let mut tcp = None;
    let mut last_err = String::from("no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, s.connect_timeout) {
            Ok(t) => {
                tcp = Some(t);
                break;
            }
            Err(e) => last_err = format!("{a}: {e}"),
        }
    }
    let tcp = tcp.ok_or_else(|| transient(last_err))?;
    // SFTP is request/response; Nagle would delay small requests by an RTT.
    let _ = tcp.set_nodelay(true);

    let mut sess = Session::new().map_err(|e| transient(e.to_string()))?;
    sess.set_tcp_stream(tcp);
    sess.set_timeout(ms(s.connect_timeout));
    for (kind, name, prefs) in [
        (MethodType::Kex, "kex", KEX),
        (MethodType::HostKey, "host key", HOST_KEYS),
        (MethodType::CryptCs, "cipher", CIPHERS),
        (MethodType::CryptSc, "cipher", CIPHERS),
        (MethodType::MacCs, "mac", MACS),
        (MethodType::MacSc, "mac", MACS),
    ] {
        sess.method_pref(kind, prefs)
            .map_err(|e| FileStoreError::Config(format!("libssh2 refused the {name} list: {e}")))?;
    }
    sess.handshake().map_err(|e| match e.code() {
        ErrorCode::Session(-5) | ErrorCode::Session(ERR_METHOD_NOT_SUPPORTED) => {
            // -5 = KEX_FAILURE: no common algorithm; retrying will not help.
            FileStoreError::Failed {
                op: "handshake",
                path: target.clone(),
                reason: format!("no common safe algorithm with the server: {e}"),
            }
        }
        _ => transient(format!("handshake: {e}")),
    })?;

    let presented = presented_fingerprint(&sess).ok_or_else(|| FileStoreError::Failed {
        op: "handshake",
        path: target.clone(),
        reason: "server host key hash unavailable".into(),
    })?;
    if !s.host_key_sha256.iter().any(|p| p.as_str() == presented) {
        let _ = sess.disconnect(None, "host key mismatch", None);
        return Err(FileStoreError::HostKeyMismatch {
            host: target,
            presented,
        });
    }

    let auth_err = |e: ssh2::Error, what: &str| match e.code() {
        ErrorCode::Session(ERR_FILE) => FileStoreError::Auth {
            host: target.clone(),
            user: s.username.clone(),
            reason: format!(
                "{what}: the private key could not be decoded (wrong passphrase or format?)"
            ),
        },
        ErrorCode::Session(ERR_AUTHENTICATION_FAILED | ERR_PUBLICKEY_UNVERIFIED) => {
            FileStoreError::Auth {
                host: target.clone(),
                user: s.username.clone(),
                reason: format!("{what}: refused by the server"),
            }
        }
        _ => transient(format!("{what}: {e}")),
    };
    match &s.auth {
        SftpAuth::Key { pem, passphrase } => sess
            .userauth_pubkey_memory(
                &s.username,
                None,
                pem.expose_secret(),
                passphrase.as_ref().map(|p| p.expose_secret()),
            )
            .map_err(|e| auth_err(e, "public key authentication"))?,
        SftpAuth::Password(pw) => sess
            .userauth_password(&s.username, pw.expose_secret())
            .map_err(|e| auth_err(e, "password authentication"))?,
    }
    if !sess.authenticated() {
        return Err(FileStoreError::Auth {
            host: target,
            user: s.username.clone(),
            reason: "server did not accept the credentials".into(),
        });
    }
    sess.set_timeout(ms(s.io_timeout));
    let sftp = sess
        .sftp()
        .map_err(|e| transient(format!("opening the sftp subsystem: {e}")))?;
    Ok(Conn {
        sftp,
        sess,
        last_used: std::time::Instant::now(),
    })
}

impl Conn {
    /// Whether a connection idle for a while still answers. Sessions die
    /// silently while a Lambda sandbox is frozen or when a server drops idle
    /// clients; probing before reuse lets non-idempotent operations (rename,
    /// put) run on a live session instead of failing on a dead one.
    pub(crate) fn is_alive_after_idle(&self, idle: Duration) -> bool {
        if self.last_used.elapsed() < idle {
            return true;
        }
        self.sftp.realpath(Path::new(".")).is_ok()
    }

    pub(crate) fn touch(&mut self) {
        self.last_used = std::time::Instant::now();
    }

    pub(crate) fn stat(&self, path: &RemotePath) -> Result<FileMeta, FileStoreError> {
        self.sftp
            .stat(std_path(path))
            .map(|st| meta_of(&st))
            .map_err(|e| map_err("stat", path, &e))
    }

    fn try_stat(&self, path: &RemotePath) -> Result<Option<FileMeta>, FileStoreError> {
        match self.stat(path) {
            Ok(m) => Ok(Some(m)),
            Err(FileStoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens `dir` for listing (see [`list_from`]).
    pub(crate) fn opendir(&self, dir: &RemotePath) -> Result<ssh2::File, FileStoreError> {
        self.sftp
            .opendir(std_path(dir))
            .map_err(|e| map_err("list", dir, &e))
    }

    /// Opens `path` for reading and reports its metadata.
    pub(crate) fn open_read(
        &self,
        path: &RemotePath,
    ) -> Result<(ssh2::File, FileMeta), FileStoreError> {
        let mut f = self
            .sftp
            .open_mode(std_path(path), OpenFlags::READ, 0, OpenType::File)
            .map_err(|e| map_err("open", path, &e))?;
        let meta = f
            .stat()
            .map(|st| meta_of(&st))
            .map_err(|e| map_err("stat", path, &e))?;
        if meta.kind == EntryKind::Dir {
            return Err(FileStoreError::WrongKind {
                path: path.to_string(),
                kind: meta.kind,
            });
        }
        Ok((f, meta))
    }

    /// Writes the chunks from `rx` to a temporary sibling of `path`, checks
    /// the size, syncs if the server supports it, and renames into place.
    /// Removes the temporary file on failure (best effort).
    pub(crate) fn put_atomic(
        &self,
        settings: &SftpSettings,
        path: &RemotePath,
        rx: &mut mpsc::Receiver<Result<Bytes, FileStoreError>>,
        expected_len: Option<u64>,
        mode: RenameMode,
    ) -> Result<PutReceipt, FileStoreError> {
        // A random suffix keeps two concurrent writers of the same name from
        // sharing one temporary file; the leading dot keeps listers (which
        // skip dot-files) from picking it up.
        let tmp = super::temp_sibling(path, "part")?;
        let result = self
            .write_tmp(settings, &tmp, path, rx, expected_len)
            .and_then(|receipt| {
                self.rename(&tmp, path, mode)?;
                Ok(receipt)
            });
        match &result {
            Ok(_) => {}
            // This session may hold half a request (libssh2 keeps unsent
            // parts of a write): a request sent after it would be read as
            // its rest and wait out the I/O timeout. Clean up on a fresh
            // connection instead.
            Err(e) if breaks_connection(e) => match connect(settings) {
                Ok(fresh) => {
                    if let Err(e) = fresh.sftp.unlink(std_path(&tmp)) {
                        tracing::warn!(path = %tmp, error = %e, "could not remove the temporary file of a failed put");
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %tmp, error = %e, "could not reconnect to remove the temporary file of a failed put");
                }
            },
            Err(_) => {
                let _ = self.sftp.unlink(std_path(&tmp));
            }
        }
        result
    }

    fn write_tmp(
        &self,
        settings: &SftpSettings,
        tmp: &RemotePath,
        target: &RemotePath,
        rx: &mut mpsc::Receiver<Result<Bytes, FileStoreError>>,
        expected_len: Option<u64>,
    ) -> Result<PutReceipt, FileStoreError> {
        // The create is one round trip: it tells a near server from a far one.
        let t0 = std::time::Instant::now();
        let mut f = self
            .sftp
            .open_mode(
                std_path(tmp),
                OpenFlags::WRITE | OpenFlags::TRUNCATE,
                0o644,
                OpenType::File,
            )
            .map_err(|e| map_err("create", tmp, &e))?;
        let rtt = t0.elapsed();
        let mut tally = super::Tally::new(expected_len);
        let written = if rtt >= STRIPED_PUT_MIN_RTT
            && expected_len.is_some_and(|n| n >= STRIPED_PUT_MIN_BYTES)
        {
            write_striped(settings, &mut f, tmp, target, rx, &mut tally)
        } else {
            write_windowed(settings, &mut f, tmp, target, rx, expected_len, &mut tally)
        };
        if let Err(e) = &written
            && breaks_connection(e)
        {
            // Closing the handle on a broken session would wait for a
            // reply that never comes; the session is dropped after this.
            self.sess.set_timeout(ms(CLEANUP_TIMEOUT));
        }
        written?;
        self.finish_tmp(f, tmp, target, tally)
    }

    /// Size and digest of the written body, synced where the server can,
    /// checked against the remote size.
    fn finish_tmp(
        &self,
        mut f: ssh2::File,
        tmp: &RemotePath,
        target: &RemotePath,
        tally: super::Tally,
    ) -> Result<PutReceipt, FileStoreError> {
        let (size, sha256) = tally.finish(target)?;
        // fsync@openssh.com where offered; servers without it still get the
        // remote size check below.
        let synced = match f.fsync() {
            Ok(()) => true,
            Err(e) if e.code() == ErrorCode::SFTP(FX_OP_UNSUPPORTED) => false,
            Err(e) if e.code() == ErrorCode::Session(-31) => false, // no extension
            Err(e) => return Err(map_err("fsync", tmp, &e)),
        };
        let remote = f.stat().map_err(|e| map_err("stat", tmp, &e))?;
        drop(f);
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

    /// `mkdir -p` below the root, deepest first: an existing directory
    /// costs two round trips (mkdir refused, stat) and a new one under an
    /// existing parent one, instead of a stat per path segment — it matters
    /// on a partner's server across a WAN. See `super::MkdirStep`.
    pub(crate) fn mkdir_all(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        let chain = dir.ancestors_below_root();
        let mut k = chain.len();
        // Up from the leaf until a mkdir succeeds or a directory exists.
        while k > 0 {
            let p = &chain[k - 1];
            let made = self.sftp.mkdir(std_path(p), 0o755);
            let step = match made {
                Ok(()) => super::MkdirStep::Made,
                Err(e) => super::MkdirStep::after_refusal(p, self.try_stat(p)?, k == 1, || {
                    map_err("mkdir", p, &e)
                })?,
            };
            match step {
                super::MkdirStep::Made | super::MkdirStep::Exists => break,
                super::MkdirStep::ParentMissing => k -= 1,
            }
        }
        // Then down again: the levels below the one made or found.
        for p in chain.iter().skip(k) {
            if let Err(e) = self.sftp.mkdir(std_path(p), 0o755) {
                // Lost a race with a concurrent mkdir: fine if it is a dir now.
                super::MkdirStep::after_refusal(p, self.try_stat(p)?, true, || {
                    map_err("mkdir", p, &e)
                })?;
            }
        }
        Ok(())
    }

    /// Plain SFTP v3 rename. OpenSSH implements it as link()+unlink() for
    /// files, so it fails when the target exists: the claim primitive.
    fn rename_no_replace(&self, from: &RemotePath, to: &RemotePath) -> Result<(), FileStoreError> {
        match self.sftp.rename(
            std_path(from),
            std_path(to),
            Some(ssh2::RenameFlags::empty()),
        ) {
            Ok(()) => Ok(()),
            Err(e) => match e.code() {
                ErrorCode::SFTP(FX_NO_SUCH_FILE | FX_NO_SUCH_PATH) => {
                    Err(FileStoreError::NotFound {
                        path: from.to_string(),
                    })
                }
                // SFTP v3 has no "exists" status; OpenSSH answers FAILURE.
                ErrorCode::SFTP(FX_FAILURE | FX_FILE_ALREADY_EXISTS) => {
                    if self.try_stat(to)?.is_some() {
                        Err(FileStoreError::AlreadyExists {
                            path: to.to_string(),
                        })
                    } else if self.try_stat(from)?.is_none() {
                        Err(FileStoreError::NotFound {
                            path: from.to_string(),
                        })
                    } else {
                        Err(map_err("rename", from, &e))
                    }
                }
                _ => Err(map_err("rename", from, &e)),
            },
        }
    }

    pub(crate) fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        mode: RenameMode,
    ) -> Result<(), FileStoreError> {
        match mode {
            RenameMode::NoReplace => self.rename_no_replace(from, to),
            RenameMode::Replace => self.rename_replace(from, to),
        }
    }

    /// Overwriting rename. libssh2 cannot send `posix-rename@openssh.com`
    /// (no generic extended-request API, and rename flags are ignored on
    /// SFTP v3), so: try a plain rename; if the target exists, move it aside
    /// to a dot-name, rename the new file into place, then delete the old
    /// one. Readers never see a partial file, but between the two renames
    /// (one round trip) the target name is briefly absent. If the second
    /// rename fails the old file is put back.
    fn rename_replace(&self, from: &RemotePath, to: &RemotePath) -> Result<(), FileStoreError> {
        match self.rename_no_replace(from, to) {
            Err(FileStoreError::AlreadyExists { .. }) => {}
            other => return other,
        }
        let aside = super::temp_sibling(to, "old")?;
        self.rename_no_replace(to, &aside)?;
        if let Err(e) = self.rename_no_replace(from, to) {
            let _ = self.rename_no_replace(&aside, to);
            return Err(e);
        }
        if let Err(e) = self.sftp.unlink(std_path(&aside)) {
            // The delivery succeeded; a leftover dot-file is only clutter.
            tracing::warn!(path = %aside, error = %e, "could not remove replaced file");
        }
        Ok(())
    }

    /// Whether this server's plain rename replaces an existing target: two
    /// probe dot-files in `dir`, one renamed onto the other.
    pub(crate) fn probe_rename(
        &self,
        dir: &RemotePath,
    ) -> Result<super::RenameProbe, FileStoreError> {
        let (a, b) = super::probe_paths(dir)?;
        for (p, byte) in [(&a, b"a"), (&b, b"b")] {
            let mut f = self
                .sftp
                .open_mode(
                    std_path(p),
                    OpenFlags::WRITE | OpenFlags::TRUNCATE,
                    0o600,
                    OpenType::File,
                )
                .map_err(|e| map_err("probe", p, &e))?;
            f.write_all(byte).map_err(|e| map_io("probe", p, &e))?;
        }
        let r = match self
            .sftp
            .rename(std_path(&a), std_path(&b), Some(ssh2::RenameFlags::empty()))
        {
            Ok(()) => super::RenameProbe::Replaces,
            Err(_) => super::RenameProbe::Refuses,
        };
        for p in [&a, &b] {
            if let Err(e) = self.sftp.unlink(std_path(p))
                && e.code() != ErrorCode::SFTP(FX_NO_SUCH_FILE)
            {
                tracing::warn!(path = %p, error = %e, "could not remove a rename probe file");
            }
        }
        Ok(r)
    }

    pub(crate) fn remove(&self, path: &RemotePath) -> Result<(), FileStoreError> {
        self.sftp
            .unlink(std_path(path))
            .map_err(|e| map_err("remove", path, &e))
    }

    pub(crate) fn remove_dir(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        self.sftp
            .rmdir(std_path(dir))
            .map_err(|e| map_err("rmdir", dir, &e))
    }
}

/// Lists an opened directory, sending pages of up to `LIST_PAGE`
/// entries. Returns early (Ok) if the receiver is gone.
pub(crate) fn list_from(
    dir: &RemotePath,
    mut handle: ssh2::File,
    tx: &mpsc::Sender<Result<Vec<DirEntry>, FileStoreError>>,
) -> Result<(), FileStoreError> {
    let mut page = Vec::with_capacity(LIST_PAGE);
    loop {
        match handle.readdir() {
            Ok((name, st)) => {
                let raw = name.as_os_str().as_bytes();
                if raw == b"." || raw == b".." {
                    continue;
                }
                // A server cannot legally send `/` in a name; skip rather
                // than fail the whole listing.
                let Ok(path) = dir.join(raw) else {
                    tracing::warn!(dir = %dir, name = %String::from_utf8_lossy(raw), "skipping unaddressable directory entry");
                    continue;
                };
                page.push(DirEntry {
                    name: raw.to_vec(),
                    display_name: String::from_utf8_lossy(raw).into_owned(),
                    path,
                    meta: meta_of(&st),
                });
                if page.len() >= LIST_PAGE {
                    let full = std::mem::replace(&mut page, Vec::with_capacity(LIST_PAGE));
                    if tx.blocking_send(Ok(full)).is_err() {
                        return Ok(());
                    }
                }
            }
            // ssh2 reports the end of the directory as this error.
            Err(e) if e.code() == ErrorCode::Session(ERR_FILE) => break,
            Err(e) => return Err(map_err("list", dir, &e)),
        }
    }
    if !page.is_empty() {
        let _ = tx.blocking_send(Ok(page));
    }
    Ok(())
}

/// Streams an opened file into `tx` in chunks of ≥ `CHUNK_TARGET` bytes.
/// Every `read` asks for a full `IO_BLOCK` so libssh2 keeps its pipeline
/// full; memory is one block plus one chunk plus the channel's capacity.
pub(crate) fn stream_file(
    path: &RemotePath,
    mut f: ssh2::File,
    size_hint: Option<u64>,
    tx: &mpsc::Sender<Result<Bytes, FileStoreError>>,
) -> Result<(), FileStoreError> {
    // Small files get small buffers: zeroing a 2 MiB block (and mapping a
    // 3 MiB one) per file dominated the CPU of a run of 16 KiB files.
    // One byte more than the size lets the first read also see the end.
    let block_len = size_hint
        .and_then(|s| usize::try_from(s.saturating_add(1)).ok())
        .map_or(IO_BLOCK, |s| s.clamp(MIN_BLOCK, IO_BLOCK));
    let mut block = vec![0u8; block_len];
    let mut acc = BytesMut::with_capacity(CHUNK_TARGET.min(block_len) + block_len);
    loop {
        let n = f.read(&mut block).map_err(|e| map_io("read", path, &e))?;
        if n == 0 {
            break;
        }
        acc.extend_from_slice(&block[..n]);
        if acc.len() >= CHUNK_TARGET {
            let chunk = acc.split().freeze();
            if tx.blocking_send(Ok(chunk)).is_err() {
                // The reader went away; stop quietly.
                return Ok(());
            }
            acc.reserve(CHUNK_TARGET + block_len);
        }
    }
    if !acc.is_empty() {
        let _ = tx.blocking_send(Ok(acc.freeze()));
    }
    Ok(())
}

/// The next piece of a put's body from its sender: `None` at the end. The
/// sender marks the end with an empty chunk (it never sends one otherwise),
/// so a channel closed without it means the put was abandoned (its caller
/// cancelled) and the partial body must not be renamed into place.
fn next_chunk(
    rx: &mut mpsc::Receiver<Result<Bytes, FileStoreError>>,
    tmp: &RemotePath,
) -> Result<Option<Bytes>, FileStoreError> {
    match rx.blocking_recv() {
        Some(Ok(chunk)) if chunk.is_empty() => Ok(None),
        Some(item) => item.map(Some),
        None => Err(FileStoreError::Transient {
            op: "put",
            path: tmp.to_string(),
            reason: "the upload was abandoned before the end of its body".into(),
        }),
    }
}

/// One libssh2 `write` of (a prefix of) `buf`, repeated while it accepts
/// nothing. libssh2 returns 0, not "try again", when the channel window
/// ran out in the middle of a packet (Dropbear and tinysshd grant small
/// windows: 24 KiB): the unsent rest stays queued inside libssh2 and goes
/// out on the next call once the server adjusts the window. Only when
/// nothing at all is accepted for the I/O timeout is it a failure.
fn write_some(
    f: &mut ssh2::File,
    tmp: &RemotePath,
    buf: &[u8],
    io_timeout: Duration,
) -> Result<usize, FileStoreError> {
    let mut since: Option<std::time::Instant> = None;
    let mut zeros = 0u32;
    loop {
        let n = f.write(buf).map_err(|e| map_io("write", tmp, &e))?;
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        let t0 = *since.get_or_insert_with(std::time::Instant::now);
        if t0.elapsed() >= io_timeout {
            return Err(FileStoreError::Transient {
                op: "write",
                path: tmp.to_string(),
                reason: format!("server accepted no data for {io_timeout:?}"),
            });
        }
        // libssh2 usually blocks for the window itself; should it keep
        // answering 0 at once, do not spin.
        zeros += 1;
        if zeros > 16 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Writes the body to `f` through one pipelined window: libssh2 keeps
/// requests in flight only within one `write` call.
fn write_windowed(
    settings: &SftpSettings,
    f: &mut ssh2::File,
    tmp: &RemotePath,
    target: &RemotePath,
    rx: &mut mpsc::Receiver<Result<Bytes, FileStoreError>>,
    expected_len: Option<u64>,
    tally: &mut super::Tally,
) -> Result<(), FileStoreError> {
    // libssh2 turns everything passed to one `write` into pipelined
    // requests and returns once some are acknowledged; the caller must
    // pass the unacknowledged bytes again at the start of the next call.
    // So keep a window: acknowledged bytes are dropped from the front,
    // new chunks appended at the back, and every call sees at least a
    // full block. Calling `write_all` per block instead would let the
    // pipeline drain at each block's end (one round trip per block,
    // which costs a third of the throughput behind a 20 ms RTT).
    // Sized for the announced length when it is small (markers, error
    // reports, sidecars), so a small put does not map megabytes.
    let cap = expected_len
        .and_then(|e| usize::try_from(e).ok())
        .map_or(3 * IO_BLOCK, |e| e.clamp(MIN_BLOCK, 3 * IO_BLOCK));
    let mut buf: Vec<u8> = Vec::with_capacity(cap);
    let mut start = 0usize;
    let mut eof = false;
    loop {
        while !eof && buf.len() - start < IO_BLOCK {
            match next_chunk(rx, tmp)? {
                Some(chunk) => {
                    tally.add(&chunk, target)?;
                    buf.extend_from_slice(&chunk);
                }
                None => eof = true,
            }
        }
        if start == buf.len() {
            break;
        }
        start += write_some(f, tmp, &buf[start..], settings.io_timeout)?;
        // Compact now and then, not per call: moving the tail costs a
        // copy, and doing it once per two blocks keeps that small.
        if start >= 2 * IO_BLOCK || start == buf.len() {
            buf.drain(..start);
            start = 0;
        }
    }
    Ok(())
}

/// Writes the body to `f`'s file in [`STRIPE`]-sized stripes, each taken
/// from one shared queue by whichever connection is free: this one and up
/// to three more, each opened on a thread of its own with the same
/// settings and writing at its stripes' offsets. This thread only reads,
/// counts and cuts the body, so no connection waits for another's turn.
/// The extra connections join as their handshakes finish, so the put starts
/// at once on this one; one that cannot connect is left out. A connection
/// that fails after taking a stripe fails the put: its stripe may be lost,
/// and the caller removes the temporary file.
fn write_striped(
    settings: &SftpSettings,
    f: &mut ssh2::File,
    tmp: &RemotePath,
    target: &RemotePath,
    rx: &mut mpsc::Receiver<Result<Bytes, FileStoreError>>,
    tally: &mut super::Tally,
) -> Result<(), FileStoreError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    type Stripe = (u64, Vec<u8>);
    // Set by a connection that fails holding a stripe, so the body is not
    // read on for nothing.
    let failed = AtomicBool::new(false);
    // Takes stripes until the queue closes; a failure ends the put.
    let drain = |f: &mut ssh2::File,
                 stripes_rx: Arc<Mutex<std::sync::mpsc::Receiver<Stripe>>>|
     -> Result<(), FileStoreError> {
        loop {
            // Held only while waiting: the next free connection takes the
            // next stripe.
            let next = match stripes_rx.lock() {
                Ok(q) => q.recv(),
                Err(_) => return Ok(()),
            };
            let Ok((off, stripe)) = next else {
                return Ok(());
            };
            if let Err(e) = write_at(f, tmp, off, &stripe, settings.io_timeout) {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
    };
    std::thread::scope(|scope| {
        // Made here, so an early return drops the sender before the scope
        // waits for the writers: they then find the queue closed.
        let (stripes_tx, stripes_rx) = std::sync::mpsc::sync_channel::<Stripe>(STRIPES_QUEUED);
        let stripes_rx = Arc::new(Mutex::new(stripes_rx));
        let spawn_err = |e: std::io::Error| FileStoreError::Transient {
            op: "put",
            path: tmp.to_string(),
            reason: format!("cannot start a writer thread: {e}"),
        };
        // This connection: it holds stripes from the first one on.
        let first = {
            let q = stripes_rx.clone();
            std::thread::Builder::new()
                .name("sftp-put-0".into())
                .spawn_scoped(scope, move || drain(f, q))
                .map_err(spawn_err)?
        };
        // The extra connections; one that cannot connect or open the file
        // never takes a stripe, so it ends with Ok.
        let mut helpers = Vec::new();
        for i in 1..STRIPED_PUT_CONNECTIONS {
            let q = stripes_rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("sftp-put-{i}"))
                .spawn_scoped(scope, move || -> Result<(), FileStoreError> {
                    let opened = connect(settings).and_then(|c| {
                        let hf = c
                            .sftp
                            .open_mode(std_path(tmp), OpenFlags::WRITE, 0o644, OpenType::File)
                            .map_err(|e| map_err("open", tmp, &e))?;
                        Ok((c, hf))
                    });
                    let (_conn, mut hf) = match opened {
                        Ok(o) => o,
                        Err(e) => {
                            tracing::debug!(error = %e, "no extra connection for a striped put");
                            return Ok(());
                        }
                    };
                    drain(&mut hf, q)
                })
                .map_err(spawn_err)?;
            helpers.push(handle);
        }
        drop(stripes_rx);
        // Set when this thread stopped because the writers did: their own
        // error then says why.
        let stopped = AtomicBool::new(false);
        let closed = || {
            stopped.store(true, Ordering::Relaxed);
            FileStoreError::Transient {
                op: "write",
                path: tmp.to_string(),
                reason: "the parallel writers stopped".into(),
            }
        };
        let result: Result<(), FileStoreError> = (|| {
            let mut off = 0u64;
            let mut stripe: Vec<u8> = Vec::with_capacity(STRIPE);
            while let Some(chunk) = next_chunk(rx, tmp)? {
                tally.add(&chunk, target)?;
                let mut rest: &[u8] = &chunk;
                while !rest.is_empty() {
                    let take = rest.len().min(STRIPE - stripe.len());
                    stripe.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if stripe.len() == STRIPE {
                        if failed.load(Ordering::Relaxed) {
                            return Err(closed());
                        }
                        let full = std::mem::replace(&mut stripe, Vec::with_capacity(STRIPE));
                        stripes_tx.send((off, full)).map_err(|_| closed())?;
                        off += STRIPE as u64;
                    }
                }
            }
            if !stripe.is_empty() {
                stripes_tx.send((off, stripe)).map_err(|_| closed())?;
            }
            Ok(())
        })();
        // Every connection finishes the queue (or stops) before the file is
        // synced and measured; a writer's own error explains the failure
        // better than "stopped".
        drop(stripes_tx);
        let joined = |r: std::thread::Result<Result<(), FileStoreError>>| {
            r.unwrap_or_else(|_| {
                Err(FileStoreError::Transient {
                    op: "write",
                    path: tmp.to_string(),
                    reason: "a parallel writer panicked".into(),
                })
            })
        };
        let mut writer_err = joined(first.join()).err();
        for h in helpers {
            let r = joined(h.join());
            writer_err = writer_err.or(r.err());
        }
        match (result, writer_err) {
            (Ok(()), Some(e)) => Err(e),
            // "Stopped" is the writer's failure seen from here.
            (Err(_), Some(e)) if stopped.load(Ordering::Relaxed) => Err(e),
            (r, _) => r,
        }
    })
}

/// One stripe at `off`, pipelined (`write_all` would take libssh2's 0,
/// see [`write_some`], for a failure).
fn write_at(
    f: &mut ssh2::File,
    tmp: &RemotePath,
    off: u64,
    data: &[u8],
    io_timeout: Duration,
) -> Result<(), FileStoreError> {
    f.seek(SeekFrom::Start(off))
        .map_err(|e| map_io("seek", tmp, &e))?;
    let mut done = 0;
    while done < data.len() {
        done += write_some(f, tmp, &data[done..], io_timeout)?;
    }
    Ok(())
}
