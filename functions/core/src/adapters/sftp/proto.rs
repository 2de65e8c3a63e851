//! Our SFTP version 3 client, written from draft-ietf-secsh-filexfer-02
//! and the extensions of OpenSSH's `PROTOCOL` file (`posix-rename`,
//! `fsync`, `hardlink`, `limits`, all `@openssh.com`). It runs
//! over any byte stream; the russh adapter gives it an SSH channel with the
//! `sftp` subsystem started.
//!
//! Why our own (it replaced russh-sftp 3.0's packet layer): servers answer
//! v3 clients with status codes of later drafts (ProFTPD sends 11, "file
//! already exists"), which must become an error of that one request, not a
//! decoding failure that closes the session; and handles are opaque bytes
//! (asyncssh's are binary counters), never text. Paths and names are bytes
//! too, so names that are not UTF-8 are addressable.
//!
//! Requests are pipelined: [`SftpChannel::send`] writes a request and
//! returns a [`Pending`] reply to await later, so a transfer keeps many
//! reads or writes in flight on one channel. One task reads replies and
//! hands each to its request by id; a reply nobody waits for any more (its
//! request timed out) is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

// Packet types (filexfer-02 §3).
const FXP_INIT: u8 = 1;
const FXP_VERSION: u8 = 2;
const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_FSTAT: u8 = 8;
const FXP_OPENDIR: u8 = 11;
const FXP_READDIR: u8 = 12;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_REALPATH: u8 = 16;
const FXP_STAT: u8 = 17;
const FXP_RENAME: u8 = 18;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
const FXP_NAME: u8 = 104;
const FXP_ATTRS: u8 = 105;
const FXP_EXTENDED: u8 = 200;
const FXP_EXTENDED_REPLY: u8 = 201;

/// Status codes: 0–8 are SFTP v3's; later drafts added more, which some
/// servers send to v3 clients anyway.
pub(crate) const FX_OK: u32 = 0;
pub(crate) const FX_EOF: u32 = 1;
pub(crate) const FX_NO_SUCH_FILE: u32 = 2;
pub(crate) const FX_PERMISSION_DENIED: u32 = 3;
pub(crate) const FX_NO_CONNECTION: u32 = 6;
pub(crate) const FX_CONNECTION_LOST: u32 = 7;
pub(crate) const FX_NO_SUCH_PATH: u32 = 10;
pub(crate) const FX_FILE_ALREADY_EXISTS: u32 = 11;

/// Open flags (`pflags`).
pub(crate) const OPEN_READ: u32 = 0x01;
pub(crate) const OPEN_WRITE: u32 = 0x02;
pub(crate) const OPEN_CREATE: u32 = 0x08;
pub(crate) const OPEN_TRUNCATE: u32 = 0x10;

const ATTR_SIZE: u32 = 0x01;
const ATTR_UIDGID: u32 = 0x02;
const ATTR_PERMISSIONS: u32 = 0x04;
const ATTR_ACMODTIME: u32 = 0x08;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// Largest reply we accept: a 255 KiB read (OpenSSH's limit) plus
/// headers, with room for servers that allow more (up to 1 MiB reads).
const MAX_PACKET: usize = 1024 * 1024 + 1024;

/// Why a request failed.
#[derive(Debug, Clone)]
pub(crate) enum SftpError {
    /// The server answered with this status (any code, known or not).
    Status { code: u32, message: String },
    /// No reply within the request timeout.
    Timeout,
    /// The channel closed or broke; every request on it fails so.
    Closed(String),
    /// The server sent something that is not SFTP v3.
    Protocol(String),
}

impl std::fmt::Display for SftpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SftpError::Status { code, message } => {
                let name = status_name(*code);
                if message.is_empty() {
                    write!(f, "server status {code} ({name})")
                } else {
                    write!(f, "server status {code} ({name}): {message}")
                }
            }
            SftpError::Timeout => write!(f, "no reply from the SFTP server in time"),
            SftpError::Closed(why) => write!(f, "SFTP channel closed: {why}"),
            SftpError::Protocol(why) => write!(f, "SFTP protocol error: {why}"),
        }
    }
}

impl SftpError {
    pub(crate) fn status(&self) -> Option<u32> {
        match self {
            SftpError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn status_name(code: u32) -> &'static str {
    match code {
        0 => "ok",
        1 => "end of file",
        2 => "no such file",
        3 => "permission denied",
        4 => "failure",
        5 => "bad message",
        6 => "no connection",
        7 => "connection lost",
        8 => "operation unsupported",
        9 => "invalid handle",
        10 => "no such path",
        11 => "file already exists",
        12 => "write protected",
        13 => "no media",
        14 => "no space on file system",
        15 => "quota exceeded",
        17 => "lock conflict",
        18 => "directory not empty",
        19 => "not a directory",
        20 => "invalid filename",
        24 => "file is a directory",
        _ => "unknown code",
    }
}

/// File attributes (the fields we use).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Attrs {
    pub size: Option<u64>,
    pub permissions: Option<u32>,
    pub mtime: Option<u32>,
}

impl Attrs {
    fn encode(&self, b: &mut BytesMut) {
        let mut flags = 0;
        if self.size.is_some() {
            flags |= ATTR_SIZE;
        }
        if self.permissions.is_some() {
            flags |= ATTR_PERMISSIONS;
        }
        b.put_u32(flags);
        if let Some(s) = self.size {
            b.put_u64(s);
        }
        if let Some(p) = self.permissions {
            b.put_u32(p);
        }
    }

    fn decode(r: &mut Reader) -> Result<Self, SftpError> {
        let flags = r.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(r.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            r.u32()?;
            r.u32()?;
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.permissions = Some(r.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            r.u32()?;
            a.mtime = Some(r.u32()?);
        }
        if flags & ATTR_EXTENDED != 0 {
            let n = r.u32()?;
            for _ in 0..n {
                r.string()?;
                r.string()?;
            }
        }
        Ok(a)
    }
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub(crate) struct NameEntry {
    pub name: Bytes,
    pub attrs: Attrs,
}

/// `limits@openssh.com` (zero means "no limit stated").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_packet: u64,
    pub max_read: u64,
    pub max_write: u64,
    pub max_handles: u64,
}

/// A decoded reply (the request id already removed).
#[derive(Debug)]
enum Reply {
    Status { code: u32, message: String },
    Handle(Bytes),
    Data(Bytes),
    Name(Vec<NameEntry>),
    Attrs(Attrs),
    Extended(Bytes),
}

/// Reads SSH wire types from a packet body.
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), SftpError> {
        if self.0.remaining() < n {
            return Err(SftpError::Protocol("truncated packet".into()));
        }
        Ok(())
    }
    fn u32(&mut self) -> Result<u32, SftpError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn u64(&mut self) -> Result<u64, SftpError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }
    fn string(&mut self) -> Result<Bytes, SftpError> {
        let n = self.u32()? as usize;
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
    fn text(&mut self) -> Result<String, SftpError> {
        Ok(String::from_utf8_lossy(&self.string()?).into_owned())
    }
}

fn put_string(b: &mut BytesMut, s: &[u8]) {
    b.put_u32(s.len() as u32);
    b.put_slice(s);
}

fn decode_reply(kind: u8, r: &mut Reader) -> Result<Reply, SftpError> {
    Ok(match kind {
        FXP_STATUS => {
            let code = r.u32()?;
            // The message and language tag are optional in practice.
            let message = if r.0.has_remaining() {
                r.text()?
            } else {
                String::new()
            };
            Reply::Status { code, message }
        }
        FXP_HANDLE => Reply::Handle(r.string()?),
        FXP_DATA => Reply::Data(r.string()?),
        FXP_NAME => {
            let n = r.u32()?;
            let mut v = Vec::with_capacity(n.min(4096) as usize);
            for _ in 0..n {
                let name = r.string()?;
                r.string()?; // longname
                let attrs = Attrs::decode(r)?;
                v.push(NameEntry { name, attrs });
            }
            Reply::Name(v)
        }
        FXP_ATTRS => Reply::Attrs(Attrs::decode(r)?),
        FXP_EXTENDED_REPLY => Reply::Extended(r.0.split_off(0)),
        other => {
            return Err(SftpError::Protocol(format!(
                "unexpected packet type {other}"
            )));
        }
    })
}

/// Requests waiting for their replies, by id.
struct Waiting {
    by_id: HashMap<u32, oneshot::Sender<Reply>>,
    /// Set once the reader stopped: why the channel is gone.
    closed: Option<String>,
}

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// One SFTP session over a byte stream.
pub(crate) struct SftpChannel {
    writer: tokio::sync::Mutex<Writer>,
    waiting: Arc<Mutex<Waiting>>,
    next_id: AtomicU32,
    timeout: Duration,
    extensions: Vec<(String, Bytes)>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for SftpChannel {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl std::fmt::Debug for SftpChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpChannel")
            .field("extensions", &self.extensions)
            .finish_non_exhaustive()
    }
}

/// A reply to come; await it with [`Pending::wait`].
pub(crate) struct Pending {
    id: u32,
    rx: oneshot::Receiver<Reply>,
    waiting: Arc<Mutex<Waiting>>,
    timeout: Duration,
}

impl Pending {
    async fn reply(self) -> Result<Reply, SftpError> {
        let Pending {
            id,
            rx,
            waiting,
            timeout,
        } = self;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(SftpError::Closed(closed_reason(&waiting))),
            Err(_) => {
                lock(&waiting).by_id.remove(&id);
                Err(SftpError::Timeout)
            }
        }
    }

    /// A request answered by a status only: OK or the error.
    pub(crate) async fn ok(self) -> Result<(), SftpError> {
        match self.reply().await? {
            Reply::Status { code: FX_OK, .. } => Ok(()),
            Reply::Status { code, message } => Err(SftpError::Status { code, message }),
            other => Err(unexpected(&other)),
        }
    }

    /// A read: the data, or `None` at the end of the file.
    pub(crate) async fn data(self) -> Result<Option<Bytes>, SftpError> {
        match self.reply().await? {
            Reply::Data(d) => Ok(Some(d)),
            Reply::Status { code: FX_EOF, .. } => Ok(None),
            Reply::Status { code, message } => Err(SftpError::Status { code, message }),
            other => Err(unexpected(&other)),
        }
    }

    async fn handle(self) -> Result<Bytes, SftpError> {
        match self.reply().await? {
            Reply::Handle(h) => Ok(h),
            Reply::Status { code, message } => Err(SftpError::Status { code, message }),
            other => Err(unexpected(&other)),
        }
    }

    async fn attrs(self) -> Result<Attrs, SftpError> {
        match self.reply().await? {
            Reply::Attrs(a) => Ok(a),
            Reply::Status { code, message } => Err(SftpError::Status { code, message }),
            other => Err(unexpected(&other)),
        }
    }

    async fn names(self) -> Result<Option<Vec<NameEntry>>, SftpError> {
        match self.reply().await? {
            Reply::Name(v) => Ok(Some(v)),
            Reply::Status { code: FX_EOF, .. } => Ok(None),
            Reply::Status { code, message } => Err(SftpError::Status { code, message }),
            other => Err(unexpected(&other)),
        }
    }

    async fn extended(self) -> Result<Bytes, SftpError> {
        match self.reply().await? {
            Reply::Extended(b) => Ok(b),
            Reply::Status { code, message } => Err(SftpError::Status { code, message }),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(r: &Reply) -> SftpError {
    let kind = match r {
        Reply::Status { .. } => "status",
        Reply::Handle(_) => "handle",
        Reply::Data(_) => "data",
        Reply::Name(_) => "name",
        Reply::Attrs(_) => "attrs",
        Reply::Extended(_) => "extended reply",
    };
    SftpError::Protocol(format!("unexpected {kind} reply"))
}

fn lock(w: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

fn closed_reason(w: &Mutex<Waiting>) -> String {
    lock(w)
        .closed
        .clone()
        .unwrap_or_else(|| "the reply was lost".into())
}

/// Marks the session closed unless disarmed (see [`SftpChannel::send`]).
struct CutOff<'a>(Option<&'a Mutex<Waiting>>);

impl Drop for CutOff<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.0 {
            let mut g = lock(w);
            g.closed
                .get_or_insert_with(|| "a request was cut off while being written".into());
            g.by_id.clear();
        }
    }
}

/// Reads one packet: its type and body.
async fn read_packet<R: AsyncRead + Unpin>(r: &mut R) -> Result<(u8, Bytes), SftpError> {
    let len = r
        .read_u32()
        .await
        .map_err(|e| SftpError::Closed(format!("reading: {e}")))? as usize;
    if len == 0 || len > MAX_PACKET {
        return Err(SftpError::Protocol(format!("packet length {len}")));
    }
    let mut body = BytesMut::zeroed(len);
    r.read_exact(&mut body)
        .await
        .map_err(|e| SftpError::Closed(format!("reading: {e}")))?;
    let mut body = body.freeze();
    let kind = body.get_u8();
    Ok((kind, body))
}

impl SftpChannel {
    /// Starts a session over `stream`: the version exchange (v3), then the
    /// reply reader task. Requests time out after `timeout`.
    pub(crate) async fn start<S>(stream: S, timeout: Duration) -> Result<Self, SftpError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut init = BytesMut::with_capacity(9);
        init.put_u32(5);
        init.put_u8(FXP_INIT);
        init.put_u32(3);
        let hello = async {
            wr.write_all(&init)
                .await
                .map_err(|e| SftpError::Closed(format!("writing: {e}")))?;
            wr.flush()
                .await
                .map_err(|e| SftpError::Closed(format!("writing: {e}")))?;
            read_packet(&mut rd).await
        };
        let (kind, body) = tokio::time::timeout(timeout, hello)
            .await
            .map_err(|_| SftpError::Timeout)??;
        if kind != FXP_VERSION {
            return Err(SftpError::Protocol(format!(
                "expected a version packet, got type {kind}"
            )));
        }
        let mut r = Reader(body);
        let version = r.u32()?;
        if version < 3 {
            return Err(SftpError::Protocol(format!(
                "server speaks SFTP version {version}, we need 3"
            )));
        }
        let mut extensions = Vec::new();
        while r.0.has_remaining() {
            let name = r.text()?;
            let data = r.string()?;
            extensions.push((name, data));
        }
        let waiting = Arc::new(Mutex::new(Waiting {
            by_id: HashMap::new(),
            closed: None,
        }));
        let w = Arc::clone(&waiting);
        let reader = tokio::spawn(async move {
            let why = loop {
                let (kind, body) = match read_packet(&mut rd).await {
                    Ok(p) => p,
                    Err(e) => break e.to_string(),
                };
                let mut r = Reader(body);
                let id = match r.u32() {
                    Ok(id) => id,
                    Err(e) => break e.to_string(),
                };
                let reply = match decode_reply(kind, &mut r) {
                    Ok(reply) => reply,
                    // A reply we cannot decode fails its own request only
                    // (as a protocol error status), not the session.
                    Err(e) => Reply::Status {
                        code: u32::MAX,
                        message: e.to_string(),
                    },
                };
                if let Some(tx) = lock(&w).by_id.remove(&id) {
                    let _ = tx.send(reply);
                }
            };
            let mut g = lock(&w);
            g.closed = Some(why);
            // Dropping the senders wakes every waiting request.
            g.by_id.clear();
        });
        Ok(Self {
            writer: tokio::sync::Mutex::new(Box::new(wr)),
            waiting,
            next_id: AtomicU32::new(1),
            timeout,
            extensions,
            reader,
        })
    }

    /// Whether the server announced extension `name` with version `v`.
    pub(crate) fn has_extension(&self, name: &str, v: &str) -> bool {
        self.extensions
            .iter()
            .any(|(n, d)| n == name && &d[..] == v.as_bytes())
    }

    /// Whether the reader has stopped (the channel is gone).
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.waiting).closed.is_some()
    }

    /// Writes one request of `kind`; `fill` appends its fields after the
    /// id. `tail` is appended as is (a write's data), saving a copy into
    /// the fields.
    async fn send(
        &self,
        kind: u8,
        fill: impl FnOnce(&mut BytesMut),
        tail: &[u8],
    ) -> Result<Pending, SftpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut b = BytesMut::with_capacity(64 + tail.len());
        b.put_u32(0);
        b.put_u8(kind);
        b.put_u32(id);
        fill(&mut b);
        b.put_slice(tail);
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        let (tx, rx) = oneshot::channel();
        {
            let mut g = lock(&self.waiting);
            if let Some(why) = &g.closed {
                return Err(SftpError::Closed(why.clone()));
            }
            g.by_id.insert(id, tx);
        }
        let written = {
            let mut w = self.writer.lock().await;
            // A request cut off midway (its future dropped, or timed out)
            // leaves a partial packet on the stream: the session is then
            // unusable, and is marked so.
            let mut cut = CutOff(Some(&self.waiting));
            let r = match tokio::time::timeout(self.timeout, w.write_all(&b)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(SftpError::Closed(format!("writing: {e}"))),
                Err(_) => Err(SftpError::Timeout),
            };
            if r.is_ok() {
                cut.0 = None;
            }
            r
        };
        if let Err(e) = written {
            lock(&self.waiting).by_id.remove(&id);
            return Err(e);
        }
        Ok(Pending {
            id,
            rx,
            waiting: Arc::clone(&self.waiting),
            timeout: self.timeout,
        })
    }

    pub(crate) async fn open(
        &self,
        path: &[u8],
        pflags: u32,
        attrs: &Attrs,
    ) -> Result<Bytes, SftpError> {
        self.send(
            FXP_OPEN,
            |b| {
                put_string(b, path);
                b.put_u32(pflags);
                attrs.encode(b);
            },
            &[],
        )
        .await?
        .handle()
        .await
    }

    pub(crate) async fn close(&self, handle: &[u8]) -> Result<(), SftpError> {
        self.send(FXP_CLOSE, |b| put_string(b, handle), &[])
            .await?
            .ok()
            .await
    }

    /// Sends a read of `len` bytes at `offset`; await [`Pending::data`].
    pub(crate) async fn send_read(
        &self,
        handle: &[u8],
        offset: u64,
        len: u32,
    ) -> Result<Pending, SftpError> {
        self.send(
            FXP_READ,
            |b| {
                put_string(b, handle);
                b.put_u64(offset);
                b.put_u32(len);
            },
            &[],
        )
        .await
    }

    /// Sends a write of `data` at `offset`; await [`Pending::ok`].
    pub(crate) async fn send_write(
        &self,
        handle: &[u8],
        offset: u64,
        data: &[u8],
    ) -> Result<Pending, SftpError> {
        self.send(
            FXP_WRITE,
            |b| {
                put_string(b, handle);
                b.put_u64(offset);
                b.put_u32(data.len() as u32);
            },
            data,
        )
        .await
    }

    pub(crate) async fn fstat(&self, handle: &[u8]) -> Result<Attrs, SftpError> {
        self.send(FXP_FSTAT, |b| put_string(b, handle), &[])
            .await?
            .attrs()
            .await
    }

    pub(crate) async fn stat(&self, path: &[u8]) -> Result<Attrs, SftpError> {
        self.send(FXP_STAT, |b| put_string(b, path), &[])
            .await?
            .attrs()
            .await
    }

    pub(crate) async fn opendir(&self, path: &[u8]) -> Result<Bytes, SftpError> {
        self.send(FXP_OPENDIR, |b| put_string(b, path), &[])
            .await?
            .handle()
            .await
    }

    /// The next batch of entries, `None` at the end.
    pub(crate) async fn readdir(&self, handle: &[u8]) -> Result<Option<Vec<NameEntry>>, SftpError> {
        self.send(FXP_READDIR, |b| put_string(b, handle), &[])
            .await?
            .names()
            .await
    }

    pub(crate) async fn remove(&self, path: &[u8]) -> Result<(), SftpError> {
        self.send(FXP_REMOVE, |b| put_string(b, path), &[])
            .await?
            .ok()
            .await
    }

    pub(crate) async fn mkdir(&self, path: &[u8], attrs: &Attrs) -> Result<(), SftpError> {
        self.send(
            FXP_MKDIR,
            |b| {
                put_string(b, path);
                attrs.encode(b);
            },
            &[],
        )
        .await?
        .ok()
        .await
    }

    pub(crate) async fn rmdir(&self, path: &[u8]) -> Result<(), SftpError> {
        self.send(FXP_RMDIR, |b| put_string(b, path), &[])
            .await?
            .ok()
            .await
    }

    /// `realpath`, used as a cheap liveness probe.
    pub(crate) async fn realpath(&self, path: &[u8]) -> Result<Bytes, SftpError> {
        match self
            .send(FXP_REALPATH, |b| put_string(b, path), &[])
            .await?
            .names()
            .await?
        {
            Some(v) if !v.is_empty() => Ok(v[0].name.clone()),
            _ => Err(SftpError::Protocol("realpath returned no name".into())),
        }
    }

    /// Plain v3 rename (servers differ on an existing target).
    pub(crate) async fn rename(&self, from: &[u8], to: &[u8]) -> Result<(), SftpError> {
        self.send(
            FXP_RENAME,
            |b| {
                put_string(b, from);
                put_string(b, to);
            },
            &[],
        )
        .await?
        .ok()
        .await
    }

    async fn send_extended(
        &self,
        name: &str,
        fill: impl FnOnce(&mut BytesMut),
    ) -> Result<Pending, SftpError> {
        self.send(
            FXP_EXTENDED,
            |b| {
                put_string(b, name.as_bytes());
                fill(b);
            },
            &[],
        )
        .await
    }

    /// `posix-rename@openssh.com`: rename(2), replacing the target.
    pub(crate) async fn posix_rename(&self, from: &[u8], to: &[u8]) -> Result<(), SftpError> {
        self.send_extended("posix-rename@openssh.com", |b| {
            put_string(b, from);
            put_string(b, to);
        })
        .await?
        .ok()
        .await
    }

    /// `hardlink@openssh.com`: link(2), which fails if `to` exists.
    pub(crate) async fn hardlink(&self, from: &[u8], to: &[u8]) -> Result<(), SftpError> {
        self.send_extended("hardlink@openssh.com", |b| {
            put_string(b, from);
            put_string(b, to);
        })
        .await?
        .ok()
        .await
    }

    /// `fsync@openssh.com` on an open handle.
    pub(crate) async fn fsync(&self, handle: &[u8]) -> Result<(), SftpError> {
        self.send_extended("fsync@openssh.com", |b| put_string(b, handle))
            .await?
            .ok()
            .await
    }

    /// `limits@openssh.com`.
    pub(crate) async fn limits(&self) -> Result<Limits, SftpError> {
        let b = self
            .send_extended("limits@openssh.com", |_| {})
            .await?
            .extended()
            .await?;
        let mut r = Reader(b);
        Ok(Limits {
            max_packet: r.u64()?,
            max_read: r.u64()?,
            max_write: r.u64()?,
            max_handles: r.u64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    //! Against a scripted server on an in-memory pipe.
    use super::*;
    use tokio::io::DuplexStream;

    async fn server_read(s: &mut DuplexStream) -> (u8, u32, Reader) {
        let (kind, body) = read_packet(s).await.expect("packet");
        let mut r = Reader(body);
        let id = if kind == FXP_INIT {
            0
        } else {
            r.u32().expect("id")
        };
        (kind, id, r)
    }

    async fn server_send(s: &mut DuplexStream, kind: u8, fill: impl FnOnce(&mut BytesMut)) {
        let mut b = BytesMut::new();
        b.put_u32(0);
        b.put_u8(kind);
        fill(&mut b);
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        s.write_all(&b).await.expect("write");
    }

    async fn pair() -> (SftpChannel, DuplexStream) {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let srv = tokio::spawn(async move {
            let (kind, _, mut r) = server_read(&mut server).await;
            assert_eq!(kind, FXP_INIT);
            assert_eq!(r.u32().expect("version"), 3);
            server_send(&mut server, FXP_VERSION, |b| {
                b.put_u32(3);
                put_string(b, b"hardlink@openssh.com");
                put_string(b, b"1");
            })
            .await;
            server
        });
        let c = SftpChannel::start(client, Duration::from_secs(5))
            .await
            .expect("start");
        (c, srv.await.expect("server"))
    }

    #[tokio::test]
    async fn status_codes_of_later_drafts_fail_one_request_not_the_session() {
        let (c, mut s) = pair().await;
        assert!(c.has_extension("hardlink@openssh.com", "1"));
        let srv = tokio::spawn(async move {
            let (kind, id, _) = server_read(&mut s).await;
            assert_eq!(kind, FXP_RENAME);
            // ProFTPD's answer to a rename onto an existing file.
            server_send(&mut s, FXP_STATUS, |b| {
                b.put_u32(id);
                b.put_u32(FX_FILE_ALREADY_EXISTS);
                put_string(b, b"File exists");
                put_string(b, b"en");
            })
            .await;
            // A code no draft defines, without message.
            let (_, id, _) = server_read(&mut s).await;
            server_send(&mut s, FXP_STATUS, |b| {
                b.put_u32(id);
                b.put_u32(77);
            })
            .await;
            let (kind, id, _) = server_read(&mut s).await;
            assert_eq!(kind, FXP_STAT);
            server_send(&mut s, FXP_ATTRS, |b| {
                b.put_u32(id);
                b.put_u32(ATTR_SIZE);
                b.put_u64(42);
            })
            .await;
            s
        });
        let e = c.rename(b"/a", b"/b").await.expect_err("refused");
        assert_eq!(e.status(), Some(FX_FILE_ALREADY_EXISTS));
        assert!(e.to_string().contains("file already exists"), "{e}");
        let e = c.remove(b"/a").await.expect_err("refused");
        assert_eq!(e.status(), Some(77));
        // The session is still alive.
        assert_eq!(c.stat(b"/a").await.expect("stat").size, Some(42));
        assert!(!c.is_closed());
        drop(srv.await);
    }

    #[tokio::test]
    async fn handles_are_opaque_bytes_and_replies_match_by_id() {
        let (c, mut s) = pair().await;
        let binary: &[u8] = &[0x00, 0xff, 0x80, 0xfe];
        let srv = tokio::spawn(async move {
            let (kind, id, mut r) = server_read(&mut s).await;
            assert_eq!(kind, FXP_OPEN);
            assert_eq!(&r.string().expect("path")[..], b"/x\xff");
            server_send(&mut s, FXP_HANDLE, |b| {
                b.put_u32(id);
                put_string(b, &[0x00, 0xff, 0x80, 0xfe]);
            })
            .await;
            // Two reads; answered in reverse order.
            let (_, id1, mut r1) = server_read(&mut s).await;
            let (_, id2, _) = server_read(&mut s).await;
            assert_eq!(&r1.string().expect("handle")[..], &[0x00, 0xff, 0x80, 0xfe]);
            server_send(&mut s, FXP_STATUS, |b| {
                b.put_u32(id2);
                b.put_u32(FX_EOF);
            })
            .await;
            server_send(&mut s, FXP_DATA, |b| {
                b.put_u32(id1);
                put_string(b, b"hello");
            })
            .await;
            s
        });
        let h = c
            .open(b"/x\xff", OPEN_READ, &Attrs::default())
            .await
            .expect("open");
        assert_eq!(&h[..], binary);
        let first = c.send_read(&h, 0, 5).await.expect("send");
        let second = c.send_read(&h, 5, 5).await.expect("send");
        assert_eq!(
            first.data().await.expect("data").as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(second.data().await.expect("eof"), None);
        drop(srv.await);
    }

    #[tokio::test]
    async fn a_closed_channel_fails_waiting_and_later_requests() {
        let (c, s) = pair().await;
        let pending = c.send_read(b"h", 0, 1).await.expect("send");
        drop(s);
        let e = pending.data().await.expect_err("closed");
        assert!(matches!(e, SftpError::Closed(_)), "{e}");
        assert!(c.stat(b"/").await.is_err());
        assert!(c.is_closed());
    }

    #[tokio::test]
    async fn limits_reply_decodes() {
        let (c, mut s) = pair().await;
        let srv = tokio::spawn(async move {
            let (kind, id, mut r) = server_read(&mut s).await;
            assert_eq!(kind, FXP_EXTENDED);
            assert_eq!(&r.string().expect("name")[..], b"limits@openssh.com");
            server_send(&mut s, FXP_EXTENDED_REPLY, |b| {
                b.put_u32(id);
                for v in [262_144u64, 261_120, 261_120, 1024] {
                    b.put_u64(v);
                }
            })
            .await;
            s
        });
        let l = c.limits().await.expect("limits");
        assert_eq!(l.max_read, 261_120);
        assert_eq!(l.max_handles, 1024);
        drop(srv.await);
    }
}
