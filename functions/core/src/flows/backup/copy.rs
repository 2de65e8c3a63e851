//! Copying one document version (the latest, or with `versions: "all"`
//! each one) from the ECM, hashed (SHA-256)
//! while it streams into a no-replace atomic put on SFTP, so memory stays
//! flat however large it is and nothing half-written is ever visible.
//!
//! Before that, [`inspect`] decides whether the document needs copying at
//! all: unchanged since the base snapshot (same node, version and size) it
//! becomes a manifest line pointing at the snapshot that holds its bytes.
//! A document the ECM refuses to serve (refused, gone, invalid) becomes a
//! [`Skipped`] record with the reason; transient failures are errors, so the
//! invocation fails and the checkpoint stays where it was.

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::manifest::BaseIndex;
use super::walk::DocItem;
use super::{BackupError, join_rel};
use crate::domain::backup::{Skipped, Versions, needs_copy};
use crate::domain::manifest::BackupRecord;
use crate::domain::paths::RemotePath;
use crate::domain::snapshot_names::version_segment;
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
        version: None,
        reason,
    })
}

/// The versions to back up (the latest, or all oldest first), metadata and
/// the incremental decision for one document: one plan per version.
pub async fn inspect(
    ecm: &dyn Ecm,
    item: DocItem,
    include_metadata: bool,
    versions: Versions,
    base: Option<&BaseIndex>,
) -> Result<Vec<Plan>, BackupError> {
    let id = item.node.id;
    let mut all = match ecm.versions(id).await {
        Ok(v) => v,
        Err(e) => match skip_reason(&e) {
            Some(r) => return Ok(vec![skipped(&item, r)]),
            None => return Err(e.into()),
        },
    };
    all.sort_by_key(|v| v.number);
    all.dedup_by_key(|v| v.number);
    let Some(latest) = all.last().map(|v| v.number) else {
        return Ok(vec![skipped(
            &item,
            "the document has no version to copy".into(),
        )]);
    };
    if versions == Versions::Latest {
        all.retain(|v| v.number == latest);
    }
    let mut metadata = std::collections::BTreeMap::new();
    if include_metadata {
        let cats = match ecm.categories(id).await {
            Ok(c) => c,
            Err(e) => match skip_reason(&e) {
                Some(r) => return Ok(vec![skipped(&item, r)]),
                None => return Err(e.into()),
            },
        };
        let rm = match ecm.rm_classifications(id).await {
            Ok(c) => c,
            Err(e) => match skip_reason(&e) {
                Some(r) => return Ok(vec![skipped(&item, r)]),
                None => return Err(e.into()),
            },
        };
        metadata.insert(
            "categories".to_owned(),
            serde_json::to_value(&cats).unwrap_or(serde_json::Value::Null),
        );
        metadata.insert("rm_classifications".to_owned(), serde_json::json!(rm));
    }
    let mut plans = Vec::with_capacity(all.len());
    for v in all {
        let mut item = item.clone();
        if v.number != latest {
            // Older versions sit beside the latest under their own names.
            let seg = version_segment(&item.node.name, id.get(), v.number);
            let dir = item.path.rsplit_once('/').map_or("", |(d, _)| d);
            item.path = if dir.is_empty() {
                seg
            } else {
                format!("{dir}/{seg}")
            };
            item.alt_path = item.path.clone();
        }
        let record = BackupRecord {
            node_id: id.get(),
            ecm_path: item.ecm_path.clone(),
            path: item.path.clone(),
            snapshot: None,
            version: v.number,
            size: v.size,
            sha256: String::new(),
            modified: if v.number == latest {
                item.node.modified.clone()
            } else {
                v.created.clone()
            },
            mime_type: v.mime_type.clone().or_else(|| item.node.mime_type.clone()),
            metadata: metadata.clone(),
        };
        let prev = base.and_then(|b| b.get(id.get(), v.number).map(|e| (b, e)));
        match prev {
            Some((b, e)) if !needs_copy(Some(e.size), v.size) => {
                plans.push(Plan::Reference(b.reference(e, record)));
            }
            _ => plans.push(Plan::Copy(Box::new(CopyJob { item, record }))),
        }
    }
    Ok(plans)
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
                        version: Some(record.version),
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
