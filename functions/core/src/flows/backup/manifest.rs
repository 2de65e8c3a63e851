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
use crate::domain::manifest::{BackupRecord, parse_backup_manifest};
use crate::domain::paths::RemotePath;
use crate::ports::file_store::{ByteStream, FileStore, FileStoreError, PutReceipt, RenameMode};

pub const MANIFEST_NAME: &str = "manifest.jsonl";
pub const PARTS_DIR: &str = ".parts";
/// Ceiling for one manifest read whole (a base or a snapshot being verified):
/// about a million lines.
const MANIFEST_LIMIT: u64 = 1 << 30;

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

/// Reads and parses a whole manifest file.
pub async fn read(
    store: &dyn FileStore,
    path: &RemotePath,
) -> Result<Vec<BackupRecord>, BackupError> {
    let bytes = store.read_small(path, MANIFEST_LIMIT).await?;
    let text = std::str::from_utf8(&bytes).map_err(|e| BackupError::Corrupt {
        path: path.to_string(),
        problem: format!("not UTF-8: {e}"),
    })?;
    parse_backup_manifest(text).map_err(|source| BackupError::Manifest {
        path: path.to_string(),
        source,
    })
}

/// What the parts written so far hold: node ids and paths already recorded.
#[derive(Debug, Default)]
pub struct Done {
    pub nodes: HashSet<i64>,
    pub paths: HashSet<String>,
}

impl Done {
    pub fn add(&mut self, r: &BackupRecord) {
        self.nodes.insert(r.node_id);
        if r.snapshot.is_none() {
            self.paths.insert(r.path.clone());
        }
    }
}

/// Reads parts `1..=parts` (on resume).
pub async fn read_done(
    store: &dyn FileStore,
    partial_dir: &RemotePath,
    parts: u32,
) -> Result<Done, BackupError> {
    let mut done = Done::default();
    for n in 1..=parts {
        for r in read(store, &part_path(partial_dir, n)?).await? {
            done.add(&r);
        }
    }
    Ok(done)
}

/// The base snapshot's lines by node id.
pub async fn read_base(
    store: &dyn FileStore,
    dir: &RemotePath,
    base: &str,
) -> Result<HashMap<i64, BackupRecord>, BackupError> {
    let path = dir.join(base)?.join(MANIFEST_NAME)?;
    Ok(read(store, &path)
        .await?
        .into_iter()
        .map(|r| (r.node_id, r))
        .collect())
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
