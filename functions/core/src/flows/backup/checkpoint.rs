//! Where a snapshot stands: `.checkpoint.json` in its `.partial` directory,
//! read at the start of each invocation and rewritten after each page; and
//! the choice, at the start, of which snapshot to work on.
//!
//! A scheduled run resumes the unfinished snapshot if there is one (a crash,
//! a lost continuation), so no schedule tick starts a second snapshot beside
//! it; a continuation names its snapshot. Both run under the plan's run
//! lease (`super::RUN_LEASE_NAME`), taken before anything here is read.

use bytes::Bytes;

use super::{BackupContext, BackupError};
use crate::domain::backup::{BackupConfig, Checkpoint, DirectoryState, partial_name};
use crate::domain::paths::RemotePath;
use crate::ports::file_store::{EntryKind, FileStore, RenameMode};

pub const CHECKPOINT_NAME: &str = ".checkpoint.json";
/// A checkpoint holds cursors and skipped documents, never the manifest.
const CHECKPOINT_LIMIT: u64 = 64 << 20;

pub async fn load(
    store: &dyn FileStore,
    partial_dir: &RemotePath,
) -> Result<Option<Checkpoint>, BackupError> {
    let path = partial_dir.join(CHECKPOINT_NAME)?;
    let bytes = match store.read_small(&path, CHECKPOINT_LIMIT).await {
        Ok(b) => b,
        Err(crate::ports::file_store::FileStoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| BackupError::Corrupt {
            path: path.to_string(),
            problem: format!("checkpoint is not valid: {e}"),
        })
}

pub async fn save(
    store: &dyn FileStore,
    partial_dir: &RemotePath,
    checkpoint: &Checkpoint,
) -> Result<(), BackupError> {
    let path = partial_dir.join(CHECKPOINT_NAME)?;
    let text = serde_json::to_vec(checkpoint).map_err(|e| BackupError::Corrupt {
        path: path.to_string(),
        problem: e.to_string(),
    })?;
    store
        .write_small(&path, Bytes::from(text), RenameMode::Replace)
        .await?;
    Ok(())
}

/// What the directory says about the snapshot to work on.
pub enum Target {
    /// Work on this `.partial` snapshot (checkpoint loaded, lease taken).
    Resume(Box<Checkpoint>),
    /// A `.partial` whose manifest and summary are written: only the rename
    /// into place is left (a crash in the last step).
    Finish { snapshot_id: String },
    /// Start a new snapshot against `base`.
    Start { base: Option<String> },
    /// The continuation's snapshot is already complete.
    AlreadyComplete(String),
}

/// Lists the backup directory (creating it on first use).
pub async fn directory_state(
    store: &dyn FileStore,
    dir: &RemotePath,
) -> Result<DirectoryState, BackupError> {
    store.mkdir_all(dir).await?;
    let entries = store.list(dir).await?;
    let names: Vec<String> = entries
        .iter()
        .filter(|e| e.meta.kind == EntryKind::Dir)
        .map(|e| e.display_name.clone())
        .collect();
    let mut state = DirectoryState::from_names(names.iter().map(String::as_str));
    state.in_use = entries
        .iter()
        .filter(|e| e.meta.kind == EntryKind::File)
        .filter_map(|e| crate::domain::backup::job_marker_snapshot(&e.display_name))
        .map(str::to_owned)
        .collect();
    state.in_use.sort();
    state.in_use.dedup();
    Ok(state)
}

/// Decides what this invocation works on. `wanted`: the continuation's id.
pub async fn choose(
    cx: &BackupContext<'_>,
    backup: &BackupConfig,
    dir: &RemotePath,
    state: &DirectoryState,
    wanted: Option<&str>,
) -> Result<Target, BackupError> {
    let id = match wanted {
        Some(id) if state.partial.iter().any(|p| p == id) => id.to_owned(),
        Some(id) if state.complete.iter().any(|p| p == id) => {
            return Ok(Target::AlreadyComplete(id.to_owned()));
        }
        Some(id) => {
            return Err(BackupError::Snapshot {
                snapshot_id: id.to_owned(),
                directory: dir.to_string(),
                problem: "neither unfinished nor complete: nothing to continue".into(),
            });
        }
        // The newest unfinished one; older ones (should there be any) stay
        // for an operator to look at, they are never complete.
        None => match state.partial.last() {
            Some(id) => id.clone(),
            None => {
                return Ok(Target::Start {
                    base: if backup.incremental {
                        state.latest_complete().cloned()
                    } else {
                        None
                    },
                });
            }
        },
    };
    let partial_dir = dir.join(partial_name(&id))?;
    match load(cx.store, &partial_dir).await? {
        Some(mut cp) => {
            // The caller holds the plan's run lease: nobody else works on it.
            cp.lease = None;
            cp.invocations += 1;
            save(cx.store, &partial_dir, &cp).await?;
            Ok(Target::Resume(Box::new(cp)))
        }
        None => {
            let summary = partial_dir.join(super::complete::SUMMARY_NAME)?;
            if cx.store.try_stat(&summary).await?.is_some() {
                Ok(Target::Finish { snapshot_id: id })
            } else {
                // Created but never checkpointed (a crash in the first
                // seconds): nothing in it is recorded; set it aside.
                let aside = dir.join(crate::domain::backup::deleting_name(&id))?;
                cx.store
                    .rename(&partial_dir, &aside, RenameMode::NoReplace)
                    .await?;
                super::complete::remove_tree(cx.store, &aside).await?;
                Ok(Target::Start {
                    base: if backup.incremental {
                        state.latest_complete().cloned()
                    } else {
                        None
                    },
                })
            }
        }
    }
}
