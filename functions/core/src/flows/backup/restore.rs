//! Manual `restore`: brings a complete snapshot (or one document of it) back
//! into a target folder of the ECM — the DR drill that proves a backup is a
//! backup. Folders are recreated under the target by their original names
//! (`ecm_path`), each document is uploaded from SFTP with its categories and
//! RM classifications (when the snapshot has them), and every restored
//! document is read back from the ECM and its SHA-256 checked against the
//! manifest. A document already there under its name with the same bytes
//! counts as restored (a rerun of a drill); with other bytes it is a problem,
//! never overwritten.

use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::manifest::{self as mf, MANIFEST_NAME};
use super::{BackupContext, BackupError, backup_dir, join_rel};
use crate::domain::backup::BackupConfig;
use crate::domain::manifest::BackupRecord;
use crate::domain::names::cs_name;
use crate::ports::ecm::{
    AppliedCategory, ByteStream, Content, Ecm, EcmError, NodeId, UploadRequest,
};
use crate::ports::events::{DetailType, Event};
use crate::ports::file_store::FileStore;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoredDoc {
    pub source_node_id: i64,
    pub node_id: i64,
    pub ecm_path: Vec<String>,
    pub size: u64,
    pub sha256: String,
    /// It was there already, byte-identical.
    pub already_present: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreProblem {
    pub source_node_id: i64,
    pub ecm_path: Vec<String>,
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    pub snapshot_id: String,
    pub target_folder: i64,
    pub restored: Vec<RestoredDoc>,
    pub bytes: u64,
    pub problems: Vec<RestoreProblem>,
}

async fn sha_of_ecm(ecm: &dyn Ecm, node: NodeId) -> Result<(u64, String), EcmError> {
    let mut d = ecm.download(node, None).await?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = d.stream.next().await {
        let chunk = chunk.map_err(|e| EcmError::Transient {
            op: "download",
            target: format!("node {node}"),
            detail: e.to_string(),
        })?;
        n += chunk.len() as u64;
        h.update(&chunk);
    }
    Ok((n, hex::encode(h.finalize())))
}

fn categories_of(l: &BackupRecord) -> Vec<AppliedCategory> {
    l.metadata
        .get("categories")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

fn classifications_of(l: &BackupRecord) -> Vec<i64> {
    l.metadata
        .get("rm_classifications")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// Restores one line; `Err` only for failures that should stop the run.
async fn restore_one(
    ecm: &dyn Ecm,
    store: &dyn FileStore,
    snapshot_root: &crate::domain::paths::RemotePath,
    snapshot_id: &str,
    target: NodeId,
    l: &BackupRecord,
) -> Result<Result<RestoredDoc, String>, BackupError> {
    let names: Result<Vec<String>, _> = l.ecm_path.iter().map(|n| cs_name(n)).collect();
    let names = match names {
        Ok(n) => n,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let Some((name, folders)) = names.split_last() else {
        return Ok(Err("empty ecm_path".into()));
    };
    let parent = ecm.ensure_folder_path(target, folders).await?;
    let src = join_rel(&snapshot_root.join(l.holder(snapshot_id))?, &l.path)?;
    let handle = match store.open_read(&src).await {
        Ok(h) => h,
        Err(e) if e.is_retryable() => return Err(e.into()),
        Err(e) => return Ok(Err(format!("cannot read {src}: {e}"))),
    };
    let stream: ByteStream = Box::pin(
        handle
            .body
            .map(|r| r.map_err(|e| std::io::Error::other(e.to_string()))),
    );
    let request = UploadRequest {
        parent,
        name: name.clone(),
        description: None,
        categories: categories_of(l),
        classifications: classifications_of(l),
        content: Content {
            stream,
            length: l.size,
            file_name: name.clone(),
            mime_type: l
                .mime_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into()),
        },
    };
    let (node, already) = match ecm.upload(request).await {
        Ok(r) => {
            if r.sha256 != l.sha256 || r.size != l.size {
                return Ok(Err(format!(
                    "sent {} bytes with sha256 {}, the manifest says {} bytes, {}",
                    r.size, r.sha256, l.size, l.sha256
                )));
            }
            (r.node_id, false)
        }
        Err(e) if e.is_conflict() => match ecm.child_by_name(parent, name).await? {
            Some(existing) => (existing.id, true),
            None => return Ok(Err(format!("the ECM reports a name conflict: {e}"))),
        },
        Err(e) if e.is_retryable() => return Err(e.into()),
        Err(e) => return Ok(Err(format!("upload refused: {e}"))),
    };
    let (size, sha) = sha_of_ecm(ecm, node).await?;
    if sha != l.sha256 || size != l.size {
        return Ok(Err(format!(
            "node {node} in the ECM has {size} bytes with sha256 {sha}, the manifest says {} bytes, {}{}",
            l.size,
            l.sha256,
            if already {
                " (it was there before the restore; left untouched)"
            } else {
                ""
            }
        )));
    }
    Ok(Ok(RestoredDoc {
        source_node_id: l.node_id,
        node_id: node.get(),
        ecm_path: l.ecm_path.clone(),
        size,
        sha256: sha,
        already_present: already,
    }))
}

pub async fn restore(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
    snapshot_id: &str,
    target_folder: i64,
    node_id: Option<i64>,
) -> Result<RestoreReport, BackupError> {
    let dir = backup_dir(cx.store, backup)?;
    let target = NodeId::new(target_folder).ok_or_else(|| BackupError::Root {
        root: target_folder,
        problem: "not a positive node id".into(),
    })?;
    let folder = cx.ecm.node(target).await?;
    if !folder.is_container() {
        return Err(BackupError::Root {
            root: target_folder,
            problem: format!("the restore target {:?} is not a folder", folder.name),
        });
    }
    let manifest_path = dir.join(snapshot_id)?.join(MANIFEST_NAME)?;
    let lines = match mf::read(cx.store, &manifest_path).await {
        Err(BackupError::Store(crate::ports::file_store::FileStoreError::NotFound { .. })) => {
            return Err(BackupError::Snapshot {
                snapshot_id: snapshot_id.to_owned(),
                directory: dir.to_string(),
                problem: "no complete snapshot of this id (manifest.jsonl not found)".into(),
            });
        }
        r => r?,
    };
    let lines: Vec<BackupRecord> = match node_id {
        Some(n) => {
            let l: Vec<_> = lines.into_iter().filter(|l| l.node_id == n).collect();
            if l.is_empty() {
                return Err(BackupError::Snapshot {
                    snapshot_id: snapshot_id.to_owned(),
                    directory: dir.to_string(),
                    problem: format!("node {n} is not in the snapshot's manifest"),
                });
            }
            l
        }
        None => lines,
    };
    let mut report = RestoreReport {
        snapshot_id: snapshot_id.to_owned(),
        target_folder,
        restored: Vec::new(),
        bytes: 0,
        problems: Vec::new(),
    };
    let (ecm, store) = (cx.ecm, cx.store);
    let dir_ref = &dir;
    let mut results = futures_util::stream::iter(lines)
        .map(|l| async move {
            let r = restore_one(ecm, store, dir_ref, snapshot_id, target, &l).await;
            (l, r)
        })
        .buffered(backup.parallelism as usize);
    while let Some((l, r)) = results.next().await {
        match r? {
            Ok(d) => {
                report.bytes += d.size;
                report.restored.push(d);
            }
            Err(problem) => report.problems.push(RestoreProblem {
                source_node_id: l.node_id,
                ecm_path: l.ecm_path.clone(),
                problem,
            }),
        }
    }
    cx.publish(Event {
        detail_type: DetailType::SnapshotRestored,
        detail: serde_json::json!({
            "backup": backup.name,
            "snapshot_id": snapshot_id,
            "target_folder": target_folder,
            "node_id": node_id,
            "documents": report.restored.len(),
            "already_present": report.restored.iter().filter(|d| d.already_present).count(),
            "bytes": report.bytes,
            "problems": report.problems,
            "invocation_id": cx.invocation_id,
        }),
    })
    .await;
    if report.problems.is_empty() {
        Ok(report)
    } else {
        let summary = report
            .problems
            .iter()
            .map(|p| format!("{} ({})", p.ecm_path.join(" / "), p.problem))
            .collect::<Vec<_>>()
            .join("; ");
        Err(BackupError::RestoreFailed {
            snapshot_id: snapshot_id.to_owned(),
            problems: report.problems.len(),
            summary,
            report: Box::new(report),
        })
    }
}
