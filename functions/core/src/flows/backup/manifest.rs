//! The snapshot's manifest on SFTP. SFTP has no safe append, so while a
//! snapshot is written each page's lines go out as one part
//! (`.parts/000001.jsonl`, …, each an atomic put) and the checkpoint counts
//! the parts; completion joins them, streaming, into `manifest.jsonl`.
//! A part written just before a crash, but not yet counted, is simply
//! written again.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use futures_util::StreamExt;

use super::BackupError;
use crate::domain::manifest::{BackupRecord, parse_backup_line};
use crate::domain::paths::RemotePath;
use crate::ports::file_store::{ByteStream, FileStore, FileStoreError, PutReceipt, RenameMode};

pub const MANIFEST_NAME: &str = "manifest.jsonl";
pub const PARTS_DIR: &str = ".parts";

pub fn part_path(partial_dir: &RemotePath, n: u32) -> Result<RemotePath, BackupError> {
    Ok(partial_dir.join(PARTS_DIR)?.join(format!("{n:06}.jsonl"))?)
}

/// Writes part `n` of the manifest.
pub async fn write_part(
    store: &dyn FileStore,
    partial_dir: &RemotePath,
    n: u32,
    lines: &[BackupRecord],
) -> Result<u64, BackupError> {
    let path = part_path(partial_dir, n)?;
    let mut text = String::new();
    for l in lines {
        text.push_str(&l.to_line().map_err(|source| BackupError::Manifest {
            path: path.to_string(),
            source,
        })?);
    }
    store.mkdir_all(&partial_dir.join(PARTS_DIR)?).await?;
    let len = text.len() as u64;
    store
        .write_small(&path, Bytes::from(text), RenameMode::Replace)
        .await?;
    Ok(len)
}

/// Longest manifest line accepted (a line with large category values).
const LINE_LIMIT: usize = 16 << 20;

/// A manifest read line by line as it streams from SFTP: memory holds one
/// chunk and one line, never the file.
pub struct LineReader {
    path: String,
    body: ByteStream,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    /// Lines taken so far (blank ones included), i.e. the number of the
    /// last line returned.
    pub line: usize,
}

impl LineReader {
    pub async fn open(store: &dyn FileStore, path: &RemotePath) -> Result<Self, BackupError> {
        let h = store.open_read(path).await?;
        Ok(LineReader {
            path: path.to_string(),
            body: h.body,
            buf: Vec::new(),
            start: 0,
            eof: false,
            line: 0,
        })
    }

    /// The next raw line without its newline, as a range of `buf`
    /// (valid until the next call); `None` at the end.
    async fn next_raw(&mut self) -> Result<Option<std::ops::Range<usize>>, BackupError> {
        let mut searched = self.start;
        loop {
            if let Some(i) = self.buf[searched..].iter().position(|b| *b == b'\n') {
                let (from, to) = (self.start, searched + i);
                self.start = to + 1;
                self.line += 1;
                return Ok(Some(from..to));
            }
            if self.eof {
                if self.start >= self.buf.len() {
                    return Ok(None);
                }
                let from = self.start;
                self.start = self.buf.len();
                self.line += 1;
                return Ok(Some(from..self.buf.len()));
            }
            if self.buf.len() - self.start > LINE_LIMIT {
                return Err(BackupError::Corrupt {
                    path: self.path.clone(),
                    problem: format!("line {} is longer than {LINE_LIMIT} bytes", self.line + 1),
                });
            }
            // Drop what was consumed, then read on.
            self.buf.drain(..self.start);
            self.start = 0;
            searched = self.buf.len();
            match self.body.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk?),
                None => self.eof = true,
            }
        }
    }

    /// The next record (blank lines skipped); `None` at the end.
    pub async fn next(&mut self) -> Result<Option<BackupRecord>, BackupError> {
        loop {
            let Some(range) = self.next_raw().await? else {
                return Ok(None);
            };
            let text = std::str::from_utf8(&self.buf[range]).map_err(|e| BackupError::Corrupt {
                path: self.path.clone(),
                problem: format!("line {}: not UTF-8: {e}", self.line),
            })?;
            if text.trim().is_empty() {
                continue;
            }
            return parse_backup_line(text, self.line)
                .map(Some)
                .map_err(|source| BackupError::Manifest {
                    path: self.path.clone(),
                    source,
                });
        }
    }

    /// Skips `n` records without parsing them (a resumed job).
    pub async fn skip(&mut self, n: u64) -> Result<(), BackupError> {
        let mut left = n;
        while left > 0 {
            match self.next_raw().await? {
                None => break,
                Some(r) if self.buf[r.clone()].iter().all(u8::is_ascii_whitespace) => {}
                Some(_) => left -= 1,
            }
        }
        Ok(())
    }
}

/// The records as a stream (ends after the first error).
pub fn records(
    reader: LineReader,
) -> impl futures_util::Stream<Item = Result<BackupRecord, BackupError>> + Send {
    futures_util::stream::unfold(Some(reader), |r| async move {
        let mut r = r?;
        match r.next().await {
            Ok(Some(l)) => Some((Ok(l), Some(r))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// Calls `each` with every record of a manifest file, streaming.
pub async fn for_each(
    store: &dyn FileStore,
    path: &RemotePath,
    mut each: impl FnMut(BackupRecord),
) -> Result<u64, BackupError> {
    let mut r = LineReader::open(store, path).await?;
    let mut n = 0;
    while let Some(l) = r.next().await? {
        each(l);
        n += 1;
    }
    Ok(n)
}

/// What the parts written so far hold: the nodes already recorded, and
/// (as 64-bit hashes, to stay small) the paths whose bytes this snapshot
/// holds.
#[derive(Debug, Default)]
pub struct Done {
    pub nodes: HashSet<i64>,
    paths: HashSet<u64>,
}

fn path_key(p: &str) -> u64 {
    use std::hash::Hasher;
    // `DefaultHasher::new()` has fixed keys: deterministic within a build.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(p.as_bytes());
    h.finish()
}

impl Done {
    pub fn add(&mut self, r: &BackupRecord) {
        self.nodes.insert(r.node_id);
        if r.snapshot.is_none() {
            self.paths.insert(path_key(&r.path));
        }
    }

    /// Whether a line of this snapshot holds its bytes at `path`.
    pub fn has_path(&self, path: &str) -> bool {
        self.paths.contains(&path_key(path))
    }
}

/// Reads parts `1..=parts` (on resume), streaming.
pub async fn read_done(
    store: &dyn FileStore,
    partial_dir: &RemotePath,
    parts: u32,
) -> Result<Done, BackupError> {
    let mut done = Done::default();
    for n in 1..=parts {
        for_each(store, &part_path(partial_dir, n)?, |r| done.add(&r)).await?;
    }
    Ok(done)
}

/// One version of a document in the base snapshot, as small as it can be:
/// what the incremental rule compares and what a reference line needs.
#[derive(Debug, Clone)]
pub struct BaseEntry {
    pub size: u64,
    sha256: [u8; 32],
    /// Index into [`BaseIndex::holders`].
    holder: u32,
    path: Box<str>,
}

/// The base snapshot's manifest by (node id, version), read streamed.
#[derive(Debug, Default)]
pub struct BaseIndex {
    pub snapshot_id: String,
    holders: Vec<String>,
    entries: HashMap<(i64, u32), BaseEntry>,
}

impl BaseIndex {
    pub fn get(&self, node_id: i64, version: u32) -> Option<&BaseEntry> {
        self.entries.get(&(node_id, version))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `record` made a reference to `e`'s bytes: path, holder, size, digest.
    pub fn reference(&self, e: &BaseEntry, record: BackupRecord) -> BackupRecord {
        BackupRecord {
            path: e.path.to_string(),
            snapshot: Some(self.holders[e.holder as usize].clone()),
            sha256: hex::encode(e.sha256),
            size: e.size,
            ..record
        }
    }
}

/// Reads the base snapshot's manifest line by line into a [`BaseIndex`].
pub async fn read_base(
    store: &dyn FileStore,
    dir: &RemotePath,
    base: &str,
) -> Result<BaseIndex, BackupError> {
    let path = dir.join(base)?.join(MANIFEST_NAME)?;
    let mut index = BaseIndex {
        snapshot_id: base.to_owned(),
        ..BaseIndex::default()
    };
    let mut holder_ids: HashMap<String, u32> = HashMap::new();
    let mut reader = LineReader::open(store, &path).await?;
    while let Some(r) = reader.next().await? {
        let holder = r.holder(base);
        let h = match holder_ids.get(holder) {
            Some(h) => *h,
            None => {
                let h = index.holders.len() as u32;
                index.holders.push(holder.to_owned());
                holder_ids.insert(holder.to_owned(), h);
                h
            }
        };
        let mut sha = [0u8; 32];
        // Checked as 64 lowercase hex digits by the line parser.
        hex::decode_to_slice(&r.sha256, &mut sha).map_err(|e| BackupError::Corrupt {
            path: path.to_string(),
            problem: format!("line {}: sha256: {e}", reader.line),
        })?;
        index.entries.insert(
            (r.node_id, r.version),
            BaseEntry {
                size: r.size,
                sha256: sha,
                holder: h,
                path: r.path.into_boxed_str(),
            },
        );
    }
    index.entries.shrink_to_fit();
    Ok(index)
}

/// Joins parts `1..=parts` into `target`, streaming: a producer reads one
/// part after the other into a small channel that the atomic put drains, so
/// the manifest is never held whole.
pub async fn write_joined(
    store: &dyn FileStore,
    partial_dir: &RemotePath,
    parts: u32,
    target: &RemotePath,
    expected_len: u64,
) -> Result<PutReceipt, BackupError> {
    let paths: Vec<RemotePath> = (1..=parts)
        .map(|n| part_path(partial_dir, n))
        .collect::<Result<_, _>>()?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, FileStoreError>>(4);
    let producer = async move {
        for p in paths {
            let mut h = match store.open_read(&p).await {
                Ok(h) => h,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            while let Some(chunk) = h.body.next().await {
                let stop = chunk.is_err();
                if tx.send(chunk).await.is_err() || stop {
                    return;
                }
            }
        }
    };
    let body: ByteStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
    let put = store.put_atomic(target, body, Some(expected_len), RenameMode::Replace);
    let ((), receipt) = tokio::join!(producer, put);
    Ok(receipt?)
}
