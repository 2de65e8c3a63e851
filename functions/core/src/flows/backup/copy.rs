//! Copying one document: its latest version from the ECM, hashed (SHA-256)
//! while it streams into a no-replace atomic put on SFTP, so memory stays
//! flat however large it is and nothing half-written is ever visible.
//!
//! Before that, [`inspect`] decides whether the document needs copying at
//! all: unchanged since the base snapshot (same node, version and size) it
//! becomes a manifest line pointing at the snapshot that holds its bytes.
//! A document the ECM refuses to serve (refused, gone, invalid) becomes a
//! [`Skipped`] record with the reason; transient failures are errors, so the
//! invocation fails and the checkpoint stays where it was.

use std::collections::HashMap;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::walk::DocItem;
use super::{BackupError, join_rel};
use crate::domain::backup::{Skipped, needs_copy};
use crate::domain::manifest::BackupRecord;
use crate::domain::paths::RemotePath;
use crate::ports::ecm::{Ecm, EcmError};
use crate::ports::file_store::{ByteStream, FileStore, FileStoreError, RenameMode};

/// A document after inspection.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Unchanged since the base: this line, pointing at the holder.
    Reference(BackupRecord),
    /// To copy: the line to write once the bytes are in (sha256 filled then).
    Copy(Box<CopyJob>),
    Skip(Skipped),
}

#[derive(Debug, Clone)]
pub struct CopyJob {
    pub item: DocItem,
    pub record: BackupRecord,
}

/// Whether an ECM refusal is about this document (skip it) rather than about
/// the run (fail the invocation).
fn skip_reason(e: &EcmError) -> Option<String> {
    match e {
        EcmError::NotFound { .. } => Some(format!("gone from the ECM during the snapshot: {e}")),
        EcmError::Refused { .. } | EcmError::Invalid { .. } | EcmError::Conflict { .. } => {
            Some(format!("the ECM refused to serve it: {e}"))
        }
        EcmError::Transient { .. } | EcmError::Auth { .. } => None,
    }
}

fn skipped(item: &DocItem, reason: String) -> Plan {
    Plan::Skip(Skipped {
        node_id: item.node.id.get(),
        ecm_path: item.ecm_path.clone(),
        reason,
    })
}

/// Latest version, metadata and the incremental decision for one document.
pub async fn inspect(
    ecm: &dyn Ecm,
    item: DocItem,
    include_metadata: bool,
    base: Option<(&str, &HashMap<i64, BackupRecord>)>,
) -> Result<Plan, BackupError> {
    let id = item.node.id;
    let versions = match ecm.versions(id).await {
        Ok(v) => v,
        Err(e) => match skip_reason(&e) {
            Some(r) => return Ok(skipped(&item, r)),
            None => return Err(e.into()),
        },
    };
    let Some(latest) = versions.iter().max_by_key(|v| v.number) else {
        return Ok(skipped(&item, "the document has no version to copy".into()));
    };
    let mut metadata = std::collections::BTreeMap::new();
    if include_metadata {
        let cats = match ecm.categories(id).await {
            Ok(c) => c,
            Err(e) => match skip_reason(&e) {
                Some(r) => return Ok(skipped(&item, r)),
                None => return Err(e.into()),
            },
        };
        let rm = match ecm.rm_classifications(id).await {
            Ok(c) => c,
            Err(e) => match skip_reason(&e) {
                Some(r) => return Ok(skipped(&item, r)),
                None => return Err(e.into()),
            },
        };
        metadata.insert(
            "categories".to_owned(),
            serde_json::to_value(&cats).unwrap_or(serde_json::Value::Null),
        );
        metadata.insert("rm_classifications".to_owned(), serde_json::json!(rm));
    }
    let record = BackupRecord {
        node_id: id.get(),
        ecm_path: item.ecm_path.clone(),
        path: item.path.clone(),
        snapshot: None,
        version: latest.number,
        size: latest.size,
        sha256: String::new(),
        modified: item.node.modified.clone(),
        mime_type: latest
            .mime_type
            .clone()
            .or_else(|| item.node.mime_type.clone()),
        metadata,
    };
    if let Some((base_id, lines)) = base {
        let prev = lines.get(&id.get());
        if !needs_copy(prev, latest.number, latest.size)
            && let Some(prev) = prev
        {
            return Ok(Plan::Reference(BackupRecord {
                path: prev.path.clone(),
                snapshot: Some(prev.holder(base_id).to_owned()),
                sha256: prev.sha256.clone(),
                size: prev.size,
                ..record
            }));
        }
    }
    Ok(Plan::Copy(Box::new(CopyJob { item, record })))
}

/// What copying a document gave.
#[derive(Debug, Clone)]
pub enum Copied {
    Line(BackupRecord),
    Skip(Skipped),
}

/// Downloads `job`'s version and writes it under `snapshot_dir`. When the
/// planned path is taken (a sibling whose name differs only in case, on a
/// server that folds case), the document goes to its unique alternative.
pub async fn copy(
    ecm: &dyn Ecm,
    store: &dyn FileStore,
    snapshot_dir: &RemotePath,
    job: CopyJob,
) -> Result<Copied, BackupError> {
    let CopyJob { item, mut record } = job;
    for rel in [item.path.clone(), item.alt_path.clone()] {
        let target = join_rel(snapshot_dir, &rel)?;
        let download = match ecm.download(item.node.id, Some(record.version)).await {
            Ok(d) => d,
            Err(e) => match skip_reason(&e) {
                Some(r) => {
                    return Ok(Copied::Skip(Skipped {
                        node_id: record.node_id,
                        ecm_path: record.ecm_path,
                        reason: r,
                    }));
                }
                None => return Err(e.into()),
            },
        };
        let expected = download.length.unwrap_or(record.size);
        let t = target.clone();
        let body: ByteStream =
            Box::pin(download.stream.map(move |r| {
                r.map_err(|e| FileStoreError::source(&t, format!("ECM download: {e}")))
            }));
        match store
            .put_atomic(&target, body, Some(expected), RenameMode::NoReplace)
            .await
        {
            Ok(receipt) => {
                record.path = rel;
                record.size = receipt.size;
                record.sha256 = receipt.sha256;
                return Ok(Copied::Line(record));
            }
            Err(FileStoreError::AlreadyExists { .. }) if rel == item.path => {
                tracing::info!(node_id = record.node_id, path = %rel, "name taken on the SFTP server; using the unique name");
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(BackupError::Corrupt {
        path: join_rel(snapshot_dir, &item.alt_path)?.to_string(),
        problem: "both the document's name and its unique alternative exist already".into(),
    })
}

/// Reads a file on SFTP and returns its size and SHA-256.
pub async fn hash_file(
    store: &dyn FileStore,
    path: &RemotePath,
) -> Result<(u64, String), FileStoreError> {
    let mut h = store.open_read(path).await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = h.body.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((size, hex::encode(hasher.finalize())))
}
