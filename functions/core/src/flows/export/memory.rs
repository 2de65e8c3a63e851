//! In-memory stand-ins for the export flow's SFTP side: a [`MemoryStore`]
//! `FileStore` keeping the semantics the flow relies on (atomic put with a
//! size check, `NoReplace` renames that fail on an existing target) and
//! [`MemoryDestinations`] handing it out for every secret name. For unit
//! tests of the flow and the handler; integration tests use real sshd.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::{Destinations, ExportError};
use crate::domain::paths::{PathError, RemotePath, RemoteRoot};
use crate::ports::file_store::{
    ByteStream, DirEntry, EntryKind, FileMeta, FileStore, FileStoreError, PageStream, PutReceipt,
    ReadHandle, RenameMode,
};

#[derive(Debug, Clone)]
enum Entry {
    File(Bytes),
    Dir,
}

/// A file tree in memory, rooted at `/`.
#[derive(Debug)]
pub struct MemoryStore {
    root: RemoteRoot,
    entries: Mutex<BTreeMap<Vec<u8>, Entry>>,
    /// Number of `put_atomic` calls that published a file.
    puts: Mutex<u64>,
}

impl MemoryStore {
    pub fn new() -> Result<Self, PathError> {
        let mut entries = BTreeMap::new();
        entries.insert(b"/".to_vec(), Entry::Dir);
        Ok(Self {
            root: RemoteRoot::parse("/")?,
            entries: Mutex::new(entries),
            puts: Mutex::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The content of a file by absolute path, if it exists.
    pub fn file(&self, path: &str) -> Option<Bytes> {
        match self.lock().get(path.as_bytes()) {
            Some(Entry::File(b)) => Some(b.clone()),
            _ => None,
        }
    }

    /// Puts a file directly (test setup), creating parents.
    pub fn insert_file(&self, path: &str, content: &[u8]) {
        let mut e = self.lock();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut acc = String::new();
        for seg in segments.iter().take(segments.len().saturating_sub(1)) {
            acc.push('/');
            acc.push_str(seg);
            e.insert(acc.as_bytes().to_vec(), Entry::Dir);
        }
        e.insert(
            path.as_bytes().to_vec(),
            Entry::File(Bytes::copy_from_slice(content)),
        );
    }

    /// Every path (files and directories) in order.
    pub fn paths(&self) -> Vec<String> {
        self.lock()
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    pub fn put_count(&self) -> u64 {
        *self.puts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn parent_of(p: &[u8]) -> Option<Vec<u8>> {
    let cut = p.iter().rposition(|b| *b == b'/')?;
    Some(if cut == 0 {
        b"/".to_vec()
    } else {
        p[..cut].to_vec()
    })
}

fn not_found(p: &RemotePath) -> FileStoreError {
    FileStoreError::NotFound {
        path: p.to_string(),
    }
}

#[async_trait]
impl FileStore for MemoryStore {
    fn root(&self) -> &RemoteRoot {
        &self.root
    }

    async fn list_pages(&self, dir: &RemotePath) -> Result<PageStream, FileStoreError> {
        let e = self.lock();
        if !matches!(e.get(dir.as_bytes()), Some(Entry::Dir)) {
            return Err(not_found(dir));
        }
        let mut out = Vec::new();
        for (k, v) in e.iter() {
            if parent_of(k).as_deref() == Some(dir.as_bytes()) && k.as_slice() != b"/" {
                let name = k[k.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1)..].to_vec();
                let path = dir.join(&name)?;
                out.push(DirEntry {
                    display_name: String::from_utf8_lossy(&name).into_owned(),
                    name,
                    path,
                    meta: meta(v),
                });
            }
        }
        Ok(Box::pin(futures_util::stream::iter([Ok(out)])))
    }

    async fn stat(&self, path: &RemotePath) -> Result<FileMeta, FileStoreError> {
        self.lock()
            .get(path.as_bytes())
            .map(meta)
            .ok_or_else(|| not_found(path))
    }

    async fn open_read(&self, path: &RemotePath) -> Result<ReadHandle, FileStoreError> {
        match self.lock().get(path.as_bytes()) {
            Some(Entry::File(b)) => Ok(ReadHandle {
                meta: meta(&Entry::File(b.clone())),
                body: Box::pin(futures_util::stream::iter([Ok(b.clone())])),
            }),
            Some(Entry::Dir) => Err(FileStoreError::WrongKind {
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
        let mut buf = Vec::new();
        while let Some(chunk) = body.next().await {
            buf.extend_from_slice(&chunk?);
        }
        if let Some(n) = expected_len
            && n != buf.len() as u64
        {
            return Err(FileStoreError::SizeMismatch {
                path: path.to_string(),
                expected: n,
                actual: buf.len() as u64,
            });
        }
        let mut e = self.lock();
        let parent = parent_of(path.as_bytes()).unwrap_or_else(|| b"/".to_vec());
        if !matches!(e.get(&parent), Some(Entry::Dir)) {
            return Err(not_found(path));
        }
        if mode == RenameMode::NoReplace && e.contains_key(path.as_bytes()) {
            return Err(FileStoreError::AlreadyExists {
                path: path.to_string(),
            });
        }
        let sha256 = hex::encode(Sha256::digest(&buf));
        let size = buf.len() as u64;
        e.insert(path.as_bytes().to_vec(), Entry::File(Bytes::from(buf)));
        *self.puts.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Ok(PutReceipt {
            size,
            sha256,
            synced: false,
        })
    }

    async fn mkdir_all(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        let mut e = self.lock();
        for p in dir.ancestors_below_root() {
            match e.get(p.as_bytes()) {
                Some(Entry::File(_)) => {
                    return Err(FileStoreError::WrongKind {
                        path: p.to_string(),
                        kind: EntryKind::File,
                    });
                }
                Some(Entry::Dir) => {}
                None => {
                    e.insert(p.as_bytes().to_vec(), Entry::Dir);
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
        let mut e = self.lock();
        if !e.contains_key(from.as_bytes()) {
            return Err(not_found(from));
        }
        if e.contains_key(to.as_bytes()) && mode == RenameMode::NoReplace {
            return Err(FileStoreError::AlreadyExists {
                path: to.to_string(),
            });
        }
        let f = from.as_bytes().to_vec();
        let moved: Vec<Vec<u8>> = e
            .keys()
            .filter(|k| **k == f || (k.starts_with(&f) && k.get(f.len()) == Some(&b'/')))
            .cloned()
            .collect();
        for k in moved {
            if let Some(v) = e.remove(&k) {
                let mut nk = to.as_bytes().to_vec();
                nk.extend_from_slice(&k[f.len()..]);
                e.insert(nk, v);
            }
        }
        Ok(())
    }

    async fn remove(&self, path: &RemotePath) -> Result<(), FileStoreError> {
        let mut e = self.lock();
        match e.get(path.as_bytes()) {
            Some(Entry::File(_)) => {
                e.remove(path.as_bytes());
                Ok(())
            }
            Some(Entry::Dir) => Err(FileStoreError::WrongKind {
                path: path.to_string(),
                kind: EntryKind::Dir,
            }),
            None => Err(not_found(path)),
        }
    }
}

fn meta(e: &Entry) -> FileMeta {
    match e {
        Entry::File(b) => FileMeta {
            kind: EntryKind::File,
            size: Some(b.len() as u64),
            mtime: None,
        },
        Entry::Dir => FileMeta {
            kind: EntryKind::Dir,
            size: None,
            mtime: None,
        },
    }
}

/// Every secret name maps to the same in-memory store.
#[derive(Debug, Clone)]
pub struct MemoryDestinations {
    pub store: Arc<MemoryStore>,
}

impl MemoryDestinations {
    pub fn new() -> Result<Self, PathError> {
        Ok(Self {
            store: Arc::new(MemoryStore::new()?),
        })
    }
}

#[async_trait]
impl Destinations for MemoryDestinations {
    async fn store(&self, _sftp_secret: &str) -> Result<Arc<dyn FileStore>, ExportError> {
        Ok(Arc::clone(&self.store) as Arc<dyn FileStore>)
    }
}
