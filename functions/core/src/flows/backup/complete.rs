//! Finishing a snapshot and pruning old ones.
//!
//! Order, each step safe to crash after: join the manifest parts into
//! `manifest.jsonl`; check the size of every file this snapshot holds and of
//! the manifest; write `snapshot.json`; remove the checkpoint (a `.partial`
//! with a summary and no checkpoint only needs its rename); rename
//! `{id}.partial` → `{id}`; remove the parts. Only then retention runs: the
//! newest `retention` complete snapshots stay, and so does every snapshot a
//! kept one points at or an unfinished verify or restore job reads; a pruned snapshot is renamed to `{id}.deleting` before
//! its files go, so a crash never leaves half a "complete" snapshot.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use chrono::Utc;
use futures_util::StreamExt;

use super::checkpoint::CHECKPOINT_NAME;
use super::manifest::{self as mf, MANIFEST_NAME, PARTS_DIR};
use super::{BackupContext, BackupError, join_rel};
use crate::domain::backup::{
    BackupConfig, Checkpoint, RetentionPlan, SNAPSHOT_FORMAT, SnapshotSummary, deleting_name,
    partial_name, plan_retention_in_use,
};
use crate::domain::paths::RemotePath;
use crate::ports::file_store::{EntryKind, FileStore, FileStoreError, RenameMode};

pub const SUMMARY_NAME: &str = "snapshot.json";
const SUMMARY_LIMIT: u64 = 64 << 20;

/// Writes manifest and summary into the `.partial` directory, verified.
pub async fn finish(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
    dir: &RemotePath,
    cp: &Checkpoint,
) -> Result<SnapshotSummary, BackupError> {
    let partial = dir.join(partial_name(&cp.snapshot_id))?;
    remove_debris(cx.store, &partial).await?;
    let manifest_path = partial.join(MANIFEST_NAME)?;
    let receipt = mf::write_joined(
        cx.store,
        &partial,
        cp.parts,
        &manifest_path,
        cp.manifest_bytes,
    )
    .await?;
    // Every file this snapshot holds, by size, reading the manifest back
    // line by line.
    let reader = mf::LineReader::open(cx.store, &manifest_path).await?;
    let store = cx.store;
    let partial_ref = &partial;
    let mut references = BTreeSet::new();
    let mut lines = 0u64;
    let refs = &mut references;
    let count = &mut lines;
    let mut checks = Box::pin(
        mf::records(reader)
            .map(move |l| {
                let l = l?;
                *count += 1;
                Ok(match l.snapshot {
                    Some(s) => {
                        refs.insert(s);
                        None
                    }
                    None => Some((join_rel(partial_ref, &l.path)?, l.size)),
                })
            })
            .map(
                |job: Result<Option<(RemotePath, u64)>, BackupError>| async move {
                    let Some((p, size)) = job? else {
                        return Ok::<_, BackupError>(None);
                    };
                    Ok(match store.try_stat(&p).await? {
                        Some(m) if m.size == Some(size) => None,
                        Some(m) => {
                            Some(format!("{p}: size {:?}, the manifest says {size}", m.size))
                        }
                        None => Some(format!("{p}: missing")),
                    })
                },
            )
            .buffer_unordered(backup.parallelism as usize),
    );
    let mut problems = Vec::new();
    let mut more = 0usize;
    while let Some(r) = checks.next().await {
        if let Some(p) = r? {
            if problems.len() < 20 {
                problems.push(p);
            } else {
                more += 1;
            }
        }
    }
    drop(checks);
    if more > 0 {
        problems.push(format!("and {more} more"));
    }
    if lines != cp.counts.documents {
        return Err(BackupError::Corrupt {
            path: manifest_path.to_string(),
            problem: format!(
                "{lines} lines, but the checkpoint counted {} documents",
                cp.counts.documents
            ),
        });
    }
    if !problems.is_empty() {
        return Err(BackupError::Corrupt {
            path: partial.to_string(),
            problem: format!("files differ from the manifest: {}", problems.join("; ")),
        });
    }
    let finished_at = Utc::now();
    let summary = SnapshotSummary {
        format: SNAPSHOT_FORMAT.into(),
        snapshot_id: cp.snapshot_id.clone(),
        backup: backup.name.clone(),
        roots: backup.roots.clone(),
        base_snapshot: cp.base_snapshot.clone(),
        references: references.into_iter().collect(),
        counts: cp.counts.clone(),
        skipped: cp.skipped.clone(),
        manifest_lines: lines,
        manifest_size: receipt.size,
        manifest_sha256: receipt.sha256,
        include_metadata: backup.include_metadata,
        started_at: cp.started_at,
        finished_at,
        duration_ms: (finished_at - cp.started_at).num_milliseconds().max(0) as u64,
        invocations: cp.invocations,
    };
    let text = serde_json::to_vec_pretty(&summary).map_err(|e| BackupError::Corrupt {
        path: partial.to_string(),
        problem: e.to_string(),
    })?;
    cx.store
        .write_small(
            &partial.join(SUMMARY_NAME)?,
            Bytes::from(text),
            RenameMode::Replace,
        )
        .await?;
    match cx.store.remove(&partial.join(CHECKPOINT_NAME)?).await {
        Ok(()) | Err(FileStoreError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(summary)
}

/// Removes what interrupted puts left behind: our names never start with a
/// dot (`snapshot_names`), so every dot-entry below the top level, and every
/// one at the top other than the checkpoint and the parts, is an adapter's
/// temporary file of a put that a crash cut short.
async fn remove_debris(store: &dyn FileStore, partial: &RemotePath) -> Result<(), BackupError> {
    let mut dirs = vec![(partial.clone(), true)];
    while let Some((d, top)) = dirs.pop() {
        for e in store.list(&d).await? {
            let name = e.display_name.as_str();
            if top && (name == CHECKPOINT_NAME || name == PARTS_DIR) {
                continue;
            }
            if name.starts_with('.') {
                tracing::info!(path = %e.path, "removing the leftover of an interrupted put");
                if e.meta.kind == EntryKind::Dir {
                    remove_tree(store, &e.path).await?;
                } else {
                    store.remove(&e.path).await?;
                }
            } else if e.meta.kind == EntryKind::Dir {
                dirs.push((e.path, false));
            }
        }
    }
    Ok(())
}

/// Renames the finished `.partial` into place and drops its parts.
pub async fn publish_dir(
    store: &dyn FileStore,
    dir: &RemotePath,
    snapshot_id: &str,
) -> Result<RemotePath, BackupError> {
    let partial = dir.join(partial_name(snapshot_id))?;
    let done = dir.join(snapshot_id)?;
    store.rename(&partial, &done, RenameMode::NoReplace).await?;
    let parts = done.join(PARTS_DIR)?;
    if let Err(e) = remove_tree(store, &parts).await {
        // Hidden and harmless: the next prune of this snapshot removes it.
        tracing::warn!(path = %parts, error = %e, "could not remove the manifest parts");
    }
    Ok(done)
}

/// Reads a complete snapshot's summary.
pub async fn read_summary(
    store: &dyn FileStore,
    dir: &RemotePath,
    snapshot_id: &str,
) -> Result<SnapshotSummary, BackupError> {
    let path = dir.join(snapshot_id)?.join(SUMMARY_NAME)?;
    let bytes = store.read_small(&path, SUMMARY_LIMIT).await?;
    serde_json::from_slice(&bytes).map_err(|e| BackupError::Corrupt {
        path: path.to_string(),
        problem: format!("not a snapshot summary: {e}"),
    })
}

/// Retention after a snapshot completed. A complete snapshot whose summary
/// cannot be read stops pruning (its references are unknown), with a warning.
pub async fn prune(
    store: &dyn FileStore,
    backup: &BackupConfig,
    dir: &RemotePath,
) -> Result<RetentionPlan, BackupError> {
    let state = super::checkpoint::directory_state(store, dir).await?;
    let mut refs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for id in &state.complete {
        match read_summary(store, dir, id).await {
            Ok(s) => {
                refs.insert(id.clone(), s.references.into_iter().collect());
            }
            Err(e) => {
                tracing::warn!(snapshot = %id, error = %e, "summary unreadable: nothing is pruned this time");
                return Ok(RetentionPlan::default());
            }
        }
    }
    let in_use = state.in_use.iter().cloned().collect();
    let plan = plan_retention_in_use(&state.complete, backup.retention, &refs, &in_use);
    for id in &plan.delete {
        let aside = dir.join(deleting_name(id))?;
        store
            .rename(&dir.join(id)?, &aside, RenameMode::NoReplace)
            .await?;
        remove_tree(store, &aside).await?;
        tracing::info!(snapshot = %id, "pruned");
    }
    Ok(plan)
}

/// Finishes removals a crash interrupted (`{id}.deleting`).
pub async fn sweep_deleting(
    store: &dyn FileStore,
    dir: &RemotePath,
    ids: &[String],
) -> Result<(), BackupError> {
    for id in ids {
        remove_tree(store, &dir.join(deleting_name(id))?).await?;
    }
    Ok(())
}

/// `rm -r`: files first, then each directory once it is empty.
pub async fn remove_tree(store: &dyn FileStore, top: &RemotePath) -> Result<(), BackupError> {
    // Depth-first without recursion: directories are removed in reverse
    // order of discovery, so children go before parents.
    let mut dirs = vec![top.clone()];
    let mut i = 0;
    while i < dirs.len() {
        let d = dirs[i].clone();
        i += 1;
        let entries = match store.list(&d).await {
            Ok(e) => e,
            Err(FileStoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        for e in entries {
            if e.meta.kind == EntryKind::Dir {
                dirs.push(e.path);
            } else {
                match store.remove(&e.path).await {
                    Ok(()) | Err(FileStoreError::NotFound { .. }) => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
    }
    for d in dirs.iter().rev() {
        match store.remove_dir(d).await {
            Ok(()) | Err(FileStoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
