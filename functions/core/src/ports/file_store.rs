//! The `FileStore` port: what the flows need from a partner's SFTP server.
//!
//! Backend-neutral and async: no ssh2 (or russh) type appears here, so a
//! second backend can sit behind the same trait. All paths are checked
//! [`RemotePath`]s. Bodies travel as streams of `Bytes` chunks so a large
//! file moves SFTP ⇄ ECM in constant memory.
//!
//! Semantics every implementation keeps:
//! - `rename(.., NoReplace)` fails with `AlreadyExists` when the target
//!   exists: the ingest claim relies on "two renames, one wins". Claimers
//!   must all rename to the *same* target path (e.g. `.inflight/<name>`):
//!   OpenSSH renames files by link()+unlink(), and where link() is refused
//!   (another owner's file under `fs.protected_hardlinks`, filesystems
//!   without hard links) it falls back to stat+rename. With one shared
//!   target both forms leave exactly one winner (the loser finds the
//!   target existing or the source gone); with per-claimer targets the
//!   fallback could let two claims succeed.
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
    /// The server cannot do this operation safely, e.g. a no-replace
    /// rename on a server whose rename replaces existing targets (found by
    /// a probe); permanent: the route needs another server or setting.
    #[error("{op} {path}: refused: {reason}")]
    Unsupported {
        op: &'static str,
        path: String,
        reason: String,
    },
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

    /// Stats the root: verifies reach, host key and credentials up front.
    async fn check(&self) -> Result<FileMeta, FileStoreError> {
        self.stat(&self.root().path()).await
    }

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

    /// Removes an empty directory; a directory that is not empty is refused
    /// (`Failed`), never emptied.
    async fn remove_dir(&self, dir: &RemotePath) -> Result<(), FileStoreError>;

    /// Checks that no-replace renames into `dir` are safe on this server:
    /// some servers' SFTP rename replaces an existing target, which would
    /// break "two claims, one wins" and overwrite first deliveries. The SFTP
    /// adapters find out with a probe (two dot-files in `dir`, once per
    /// store) and refuse with `Unsupported` where no safe way exists; they
    /// also check before every no-replace rename and put, so calling this
    /// only moves the refusal up front (e.g. before a run claims anything).
    async fn verify_no_replace(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        let _ = dir;
        Ok(())
    }

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

/// An in-memory `FileStore` for unit tests of the flows. It keeps the
/// semantics the flows rely on (no-replace renames fail on an existing
/// target, atomic puts, `mkdir -p`, parents must exist) without a server.
pub mod memory {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use async_trait::async_trait;
    use bytes::Bytes;
    use chrono::Utc;
    use futures_util::StreamExt;
    use sha2::{Digest, Sha256};

    use super::{
        ByteStream, DirEntry, EntryKind, FileMeta, FileStore, FileStoreError, PageStream,
        PutReceipt, ReadHandle, RenameMode,
    };
    use crate::domain::paths::{RemotePath, RemoteRoot};

    #[derive(Clone)]
    enum Node {
        Dir,
        File(Bytes, chrono::DateTime<Utc>),
    }

    /// The store; clone the `Arc` you wrap it in to share it.
    pub struct MemoryFileStore {
        root: RemoteRoot,
        nodes: Mutex<BTreeMap<Vec<u8>, Node>>,
        /// `put_atomic` calls that published a file.
        puts: std::sync::atomic::AtomicU64,
    }

    impl std::fmt::Debug for MemoryFileStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("MemoryFileStore")
                .field("root", &self.root)
                .finish_non_exhaustive()
        }
    }

    impl MemoryFileStore {
        /// An empty store whose root directory exists.
        pub fn new(root: RemoteRoot) -> Self {
            let mut nodes = BTreeMap::new();
            nodes.insert(root.as_bytes().to_vec(), Node::Dir);
            Self {
                root,
                nodes: Mutex::new(nodes),
                puts: std::sync::atomic::AtomicU64::new(0),
            }
        }

        /// Test inspection: how many `put_atomic` calls published a file.
        pub fn put_count(&self) -> u64 {
            self.puts.load(std::sync::atomic::Ordering::SeqCst)
        }

        /// Test inspection: every path (files and directories), in order.
        pub fn paths(&self) -> Vec<String> {
            self.lock()
                .keys()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect()
        }

        /// Test inspection by absolute path string; `None` for a path
        /// outside the root or not a file.
        pub fn file(&self, path: &str) -> Option<Bytes> {
            self.root.resolve(path).ok().and_then(|p| self.content(&p))
        }

        /// Test set-up by absolute path string (creating parents).
        ///
        /// # Panics
        /// On a path outside the root: test set-up only.
        pub fn insert_file(&self, path: &str, content: &[u8]) {
            match self.root.resolve(path) {
                Ok(p) => self.seed(&p, Bytes::copy_from_slice(content)),
                Err(e) => panic!("insert_file({path:?}): {e}"),
            }
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Node>> {
            self.nodes.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Test set-up: puts a file (creating parents) without the port.
        pub fn seed(&self, path: &RemotePath, bytes: impl Into<Bytes>) {
            let mut n = self.lock();
            for a in path.ancestors_below_root() {
                if a != *path {
                    n.entry(a.as_bytes().to_vec()).or_insert(Node::Dir);
                }
            }
            n.insert(
                path.as_bytes().to_vec(),
                Node::File(bytes.into(), Utc::now()),
            );
        }

        /// Test inspection: the content of a file, if it exists.
        pub fn content(&self, path: &RemotePath) -> Option<Bytes> {
            match self.lock().get(path.as_bytes()) {
                Some(Node::File(b, _)) => Some(b.clone()),
                _ => None,
            }
        }

        fn check(&self, p: &RemotePath) -> Result<(), FileStoreError> {
            self.root.resolve_bytes(p.as_bytes())?;
            Ok(())
        }
    }

    fn meta(node: &Node) -> FileMeta {
        match node {
            Node::Dir => FileMeta {
                kind: EntryKind::Dir,
                size: Some(0),
                mtime: None,
            },
            Node::File(b, t) => FileMeta {
                kind: EntryKind::File,
                size: Some(b.len() as u64),
                mtime: Some(*t),
            },
        }
    }

    fn not_found(p: &RemotePath) -> FileStoreError {
        FileStoreError::NotFound {
            path: p.to_string(),
        }
    }

    fn parent_is_dir(n: &BTreeMap<Vec<u8>, Node>, p: &RemotePath) -> Result<(), FileStoreError> {
        match p.parent() {
            Some(d) if matches!(n.get(d.as_bytes()), Some(Node::Dir)) => Ok(()),
            Some(d) => Err(not_found(&d)),
            None => Err(FileStoreError::WrongKind {
                path: p.to_string(),
                kind: EntryKind::Dir,
            }),
        }
    }

    #[async_trait]
    impl FileStore for MemoryFileStore {
        fn root(&self) -> &RemoteRoot {
            &self.root
        }

        async fn list_pages(&self, dir: &RemotePath) -> Result<PageStream, FileStoreError> {
            self.check(dir)?;
            let n = self.lock();
            match n.get(dir.as_bytes()) {
                Some(Node::Dir) => {}
                Some(_) => {
                    return Err(FileStoreError::WrongKind {
                        path: dir.to_string(),
                        kind: EntryKind::File,
                    });
                }
                None => return Err(not_found(dir)),
            }
            let mut entries = Vec::new();
            for (k, node) in n.iter() {
                let Ok(child) = self.root.resolve_bytes(k) else {
                    continue;
                };
                if child.parent().as_ref() == Some(dir) && child != *dir {
                    let name = child.file_name().to_vec();
                    entries.push(DirEntry {
                        display_name: String::from_utf8_lossy(&name).into_owned(),
                        name,
                        path: child,
                        meta: meta(node),
                    });
                }
            }
            let pages: Vec<Result<Vec<DirEntry>, FileStoreError>> =
                entries.chunks(1000).map(|c| Ok(c.to_vec())).collect();
            Ok(Box::pin(futures_util::stream::iter(pages)))
        }

        async fn stat(&self, path: &RemotePath) -> Result<FileMeta, FileStoreError> {
            self.check(path)?;
            self.lock()
                .get(path.as_bytes())
                .map(meta)
                .ok_or_else(|| not_found(path))
        }

        async fn open_read(&self, path: &RemotePath) -> Result<ReadHandle, FileStoreError> {
            self.check(path)?;
            let node = self.lock().get(path.as_bytes()).cloned();
            match node {
                Some(n @ Node::File(..)) => {
                    let m = meta(&n);
                    let Node::File(b, _) = n else {
                        return Err(not_found(path));
                    };
                    // Several chunks, as a real store would deliver.
                    let chunks: Vec<Result<Bytes, FileStoreError>> = (0..b.len())
                        .step_by(64 * 1024)
                        .map(|i| Ok(b.slice(i..(i + 64 * 1024).min(b.len()))))
                        .collect();
                    Ok(ReadHandle {
                        meta: m,
                        body: Box::pin(futures_util::stream::iter(chunks)),
                    })
                }
                Some(Node::Dir) => Err(FileStoreError::WrongKind {
                    path: path.to_string(),
                    kind: EntryKind::Dir,
                }),
                None => Err(not_found(path)),
            }
        }

        async fn put_atomic(
            &self,
            path: &RemotePath,
            mut body: ByteStream,
            expected_len: Option<u64>,
            mode: RenameMode,
        ) -> Result<PutReceipt, FileStoreError> {
            self.check(path)?;
            parent_is_dir(&self.lock(), path)?;
            let mut buf = Vec::new();
            let mut h = Sha256::new();
            while let Some(c) = body.next().await {
                let c = c.map_err(|e| FileStoreError::source(path, e))?;
                h.update(&c);
                buf.extend_from_slice(&c);
            }
            if let Some(e) = expected_len
                && e != buf.len() as u64
            {
                return Err(FileStoreError::SizeMismatch {
                    path: path.to_string(),
                    expected: e,
                    actual: buf.len() as u64,
                });
            }
            let mut n = self.lock();
            parent_is_dir(&n, path)?;
            match (n.get(path.as_bytes()), mode) {
                (Some(_), RenameMode::NoReplace) => {
                    return Err(FileStoreError::AlreadyExists {
                        path: path.to_string(),
                    });
                }
                (Some(Node::Dir), RenameMode::Replace) => {
                    return Err(FileStoreError::WrongKind {
                        path: path.to_string(),
                        kind: EntryKind::Dir,
                    });
                }
                _ => {}
            }
            let size = buf.len() as u64;
            n.insert(
                path.as_bytes().to_vec(),
                Node::File(Bytes::from(buf), Utc::now()),
            );
            self.puts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(PutReceipt {
                size,
                sha256: hex::encode(h.finalize()),
                synced: true,
            })
        }

        async fn mkdir_all(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
            self.check(dir)?;
            let mut n = self.lock();
            for a in dir.ancestors_below_root() {
                match n.get(a.as_bytes()) {
                    Some(Node::Dir) => {}
                    Some(Node::File(..)) => {
                        return Err(FileStoreError::WrongKind {
                            path: a.to_string(),
                            kind: EntryKind::File,
                        });
                    }
                    None => {
                        n.insert(a.as_bytes().to_vec(), Node::Dir);
                    }
                }
            }
            Ok(())
        }

        async fn rename(
            &self,
            from: &RemotePath,
            to: &RemotePath,
            mode: RenameMode,
        ) -> Result<(), FileStoreError> {
            self.check(from)?;
            self.check(to)?;
            let mut n = self.lock();
            let Some(node) = n.get(from.as_bytes()).cloned() else {
                return Err(not_found(from));
            };
            parent_is_dir(&n, to)?;
            if mode == RenameMode::NoReplace && n.contains_key(to.as_bytes()) {
                return Err(FileStoreError::AlreadyExists {
                    path: to.to_string(),
                });
            }
            if matches!(node, Node::Dir) {
                // A directory moves with its subtree (package directories
                // are built under a temporary name and renamed at the end).
                let f = from.as_bytes().to_vec();
                if to.as_bytes().starts_with(&f) && to.as_bytes().get(f.len()) == Some(&b'/') {
                    return Err(FileStoreError::Failed {
                        op: "rename",
                        path: from.to_string(),
                        reason: "cannot move a directory into itself".into(),
                    });
                }
                let moved: Vec<Vec<u8>> = n
                    .keys()
                    .filter(|k| **k == f || (k.starts_with(&f) && k.get(f.len()) == Some(&b'/')))
                    .cloned()
                    .collect();
                for k in moved {
                    if let Some(v) = n.remove(&k) {
                        let mut nk = to.as_bytes().to_vec();
                        nk.extend_from_slice(&k[f.len()..]);
                        n.insert(nk, v);
                    }
                }
                return Ok(());
            }
            n.remove(from.as_bytes());
            n.insert(to.as_bytes().to_vec(), node);
            Ok(())
        }

        async fn remove(&self, path: &RemotePath) -> Result<(), FileStoreError> {
            self.check(path)?;
            let mut n = self.lock();
            match n.get(path.as_bytes()) {
                Some(Node::File(..)) => {
                    n.remove(path.as_bytes());
                    Ok(())
                }
                Some(Node::Dir) => Err(FileStoreError::WrongKind {
                    path: path.to_string(),
                    kind: EntryKind::Dir,
                }),
                None => Err(not_found(path)),
            }
        }

        async fn remove_dir(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
            self.check(dir)?;
            let mut n = self.lock();
            match n.get(dir.as_bytes()) {
                Some(Node::Dir) => {
                    let d = dir.as_bytes();
                    let has_children = n.keys().any(|k| {
                        k.len() > d.len()
                            && k.starts_with(d)
                            && (d == b"/" || k.get(d.len()) == Some(&b'/'))
                    });
                    if has_children {
                        return Err(FileStoreError::Failed {
                            op: "rmdir",
                            path: dir.to_string(),
                            reason: "directory not empty".into(),
                        });
                    }
                    n.remove(d);
                    Ok(())
                }
                Some(Node::File(..)) => Err(FileStoreError::WrongKind {
                    path: dir.to_string(),
                    kind: EntryKind::File,
                }),
                None => Err(not_found(dir)),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn store() -> MemoryFileStore {
            MemoryFileStore::new(RemoteRoot::parse("/data").expect("root"))
        }

        #[tokio::test]
        async fn claim_rename_refuses_an_existing_target() {
            let s = store();
            let r = s.root().clone();
            let (a, b) = (
                r.resolve("in/a").unwrap(),
                r.resolve("in/.inflight/a").unwrap(),
            );
            s.seed(&a, "one");
            s.mkdir_all(&b.parent().unwrap()).await.unwrap();
            s.rename(&a, &b, RenameMode::NoReplace).await.unwrap();
            assert!(matches!(
                s.rename(&a, &b, RenameMode::NoReplace).await,
                Err(FileStoreError::NotFound { .. })
            ));
            s.seed(&a, "two");
            assert!(matches!(
                s.rename(&a, &b, RenameMode::NoReplace).await,
                Err(FileStoreError::AlreadyExists { .. })
            ));
            s.rename(&a, &b, RenameMode::Replace).await.unwrap();
            assert_eq!(s.content(&b).unwrap(), "two");
        }

        #[tokio::test]
        async fn put_lists_reads_and_hashes() {
            let s = store();
            let r = s.root().clone();
            let f = r.resolve("out/x.bin").unwrap();
            assert!(
                s.write_small(&f, Bytes::from_static(b"abc"), RenameMode::NoReplace)
                    .await
                    .is_err(),
                "parent missing"
            );
            s.mkdir_all(&f.parent().unwrap()).await.unwrap();
            let rc = s
                .write_small(&f, Bytes::from_static(b"abc"), RenameMode::NoReplace)
                .await
                .unwrap();
            assert_eq!(
                rc.sha256,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            );
            let names: Vec<_> = s
                .list(&r.resolve("out").unwrap())
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.display_name)
                .collect();
            assert_eq!(names, ["x.bin"]);
            assert_eq!(&s.read_small(&f, 10).await.unwrap()[..], b"abc");
            assert!(s.read_small(&f, 2).await.is_err());
            s.remove(&f).await.unwrap();
            assert!(s.try_stat(&f).await.unwrap().is_none());
        }
    }
}
