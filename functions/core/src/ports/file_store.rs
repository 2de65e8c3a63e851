//! The `FileStore` port: what the flows need from a partner's SFTP server.
//!
//! Backend-neutral and async: no ssh2 (or russh) type appears here, so a
//! second backend can sit behind the same trait. All paths are checked
//! [`RemotePath`]s. Bodies travel as streams of `Bytes` chunks so a large
//! file moves SFTP ⇄ ECM in constant memory.
//!
//! Semantics every implementation keeps:
//! - `rename(.., NoReplace)` fails with `AlreadyExists` when the target
//!   exists: the ingest claim relies on "two renames, one wins".
//! - `put_atomic` never makes a half-written file visible under the final
//!   name: it writes a dot-file next to the target, checks the size, syncs
//!   where the server can, then renames.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use thiserror::Error;

use crate::domain::paths::{PathError, RemotePath, RemoteRoot};

/// A stream of body chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, FileStoreError>> + Send>>;

/// A directory listing delivered in pages, so 10k+ entries never have to be
/// held at once by callers that do not want to.
pub type PageStream = Pin<Box<dyn Stream<Item = Result<Vec<DirEntry>, FileStoreError>> + Send>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// Metadata of one remote object. `size`/`mtime` are `None` when the server
/// does not report them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub kind: EntryKind,
    pub size: Option<u64>,
    pub mtime: Option<DateTime<Utc>>,
}

/// One listed entry. `name` keeps the raw bytes (names need not be UTF-8);
/// `display_name` is a lossy rendering for logs and templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub display_name: String,
    pub path: RemotePath,
    pub meta: FileMeta,
}

/// How a rename treats an existing target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    /// Fail with `AlreadyExists` if the target exists (claims, first delivery).
    NoReplace,
    /// Replace an existing target (intended overwrite of a delivery).
    Replace,
}

/// What an atomic put wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutReceipt {
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes written, computed while streaming.
    pub sha256: String,
    /// Whether the server confirmed a durable sync (`fsync@openssh.com`).
    pub synced: bool,
}

/// A readable remote file: its metadata at open time and the body.
pub struct ReadHandle {
    pub meta: FileMeta,
    pub body: ByteStream,
}

impl std::fmt::Debug for ReadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadHandle")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// Errors of the port. Each carries the path (or host) involved; use
/// [`FileStoreError::is_retryable`] to decide whether a retry can help.
#[derive(Debug, Error)]
pub enum FileStoreError {
    #[error("{path}: no such file or directory")]
    NotFound { path: String },
    #[error("{path}: already exists")]
    AlreadyExists { path: String },
    #[error("{path}: permission denied")]
    PermissionDenied { path: String },
    #[error(
        "host key of {host} does not match any pinned fingerprint: server presented {presented}"
    )]
    HostKeyMismatch { host: String, presented: String },
    #[error("authentication as {user} on {host} failed: {reason}")]
    Auth {
        host: String,
        user: String,
        reason: String,
    },
    /// Connection problems, timeouts, a server that went away: retry later.
    #[error("{op} {path}: transient failure: {reason}")]
    Transient {
        op: &'static str,
        path: String,
        reason: String,
    },
    #[error("{path}: wrote {actual} bytes but {expected} were expected")]
    SizeMismatch {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("{path}: larger than the limit of {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: is a {kind:?}, not the expected kind")]
    WrongKind { path: String, kind: EntryKind },
    #[error(transparent)]
    InvalidPath(#[from] PathError),
    #[error("SFTP settings are invalid: {0}")]
    Config(String),
    /// The caller's body stream failed while we were writing; nothing was
    /// published under the final name.
    #[error("{path}: the source of the upload failed: {reason}")]
    Source { path: String, reason: String },
    /// Any other refusal by the server; permanent.
    #[error("{op} {path}: {reason}")]
    Failed {
        op: &'static str,
        path: String,
        reason: String,
    },
}

impl FileStoreError {
    /// Whether retrying the same operation later can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transient { .. } => true,
            // The source may be another network stream (the ECM) that failed
            // transiently; the caller knows better, but a retry is harmless.
            Self::Source { .. } => true,
            _ => false,
        }
    }

    /// Wraps a failure of the caller's body stream.
    pub fn source(path: &RemotePath, reason: impl std::fmt::Display) -> Self {
        Self::Source {
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// A partner file server, confined to one root.
#[async_trait]
pub trait FileStore: Send + Sync {
    /// The root every path of this store lies within.
    fn root(&self) -> &RemoteRoot;

    /// Lists `dir` in pages (`.` and `..` omitted; order as the server gives).
    async fn list_pages(&self, dir: &RemotePath) -> Result<PageStream, FileStoreError>;

    /// Lists `dir` completely.
    async fn list(&self, dir: &RemotePath) -> Result<Vec<DirEntry>, FileStoreError> {
        let mut pages = self.list_pages(dir).await?;
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            out.extend(page?);
        }
        Ok(out)
    }

    /// Metadata of `path` (symlinks are followed).
    async fn stat(&self, path: &RemotePath) -> Result<FileMeta, FileStoreError>;

    /// `stat` that maps `NotFound` to `None`.
    async fn try_stat(&self, path: &RemotePath) -> Result<Option<FileMeta>, FileStoreError> {
        match self.stat(path).await {
            Ok(m) => Ok(Some(m)),
            Err(FileStoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens `path` for a streaming read. The body yields chunks in order and
    /// ends after the last byte; memory stays bounded however large the file.
    async fn open_read(&self, path: &RemotePath) -> Result<ReadHandle, FileStoreError>;

    /// Writes `body` to `path` atomically: to a dot-file beside it, then a
    /// size check against `expected_len` (if given), a sync where supported,
    /// and a rename by `mode`. On any failure the temporary file is removed
    /// (best effort) and the target is untouched.
    async fn put_atomic(
        &self,
        path: &RemotePath,
        body: ByteStream,
        expected_len: Option<u64>,
        mode: RenameMode,
    ) -> Result<PutReceipt, FileStoreError>;

    /// Creates `dir` and any missing parents below the root (`mkdir -p`).
    async fn mkdir_all(&self, dir: &RemotePath) -> Result<(), FileStoreError>;

    async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        mode: RenameMode,
    ) -> Result<(), FileStoreError>;

    /// Removes a file (not a directory).
    async fn remove(&self, path: &RemotePath) -> Result<(), FileStoreError>;

    /// Writes a small file (marker, sidecar, error report) atomically.
    async fn write_small(
        &self,
        path: &RemotePath,
        bytes: Bytes,
        mode: RenameMode,
    ) -> Result<PutReceipt, FileStoreError> {
        let len = bytes.len() as u64;
        let body: ByteStream = Box::pin(futures_util::stream::iter([Ok(bytes)]));
        self.put_atomic(path, body, Some(len), mode).await
    }

    /// Reads a small file whole, refusing anything over `limit` bytes.
    async fn read_small(&self, path: &RemotePath, limit: u64) -> Result<Bytes, FileStoreError> {
        let mut h = self.open_read(path).await?;
        if h.meta.size.is_some_and(|s| s > limit) {
            return Err(FileStoreError::TooLarge {
                path: path.to_string(),
                limit,
            });
        }
        let mut buf = Vec::new();
        while let Some(chunk) = h.body.next().await {
            let chunk = chunk?;
            // The size can grow after the stat; check as we go too.
            if buf.len() as u64 + chunk.len() as u64 > limit {
                return Err(FileStoreError::TooLarge {
                    path: path.to_string(),
                    limit,
                });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    }
}
