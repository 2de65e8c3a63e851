//! Backup job configuration (`backup-snapshot`), carried in the schedule's
//! input like an ingest route, and the pure snapshot decisions: events,
//! the checkpoint a snapshot resumes from, the incremental rule, the summary
//! (`snapshot.json`) and which snapshots retention prunes.
//!
//! Events (see `events/backup-*.json`):
//! - `{"backup": {...}}` — scheduled: resume the unfinished snapshot if there
//!   is one (a crash or a lost continuation), else start a new one;
//! - `{"action":"continue","backup":{...},"snapshot_id":"..."}` — the
//!   continuation a run publishes (as the `detail` of a `Snapshot
//!   Continuation` event) when its deadline nears;
//! - `{"action":"verify","backup":{...},"snapshot_id":"..."}` — manual re-hash;
//! - `{"action":"restore","backup":{...},"snapshot_id":"...","target_folder":N,
//!   "node_id":M?}` — manual restore into an ECM folder (the DR drill).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::route::RouteError;
use super::schema_ref::SchemaRef;
pub use super::snapshot_names::{is_snapshot_id, snapshot_id};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// The JSON Schema this file follows (for editors); ignored.
    #[serde(rename = "$schema", default, skip_serializing)]
    pub schema: SchemaRef,
    pub name: String,
    /// Content Server node ids whose subtrees are backed up.
    pub roots: Vec<i64>,
    pub sftp_secret: String,
    /// Directory on the SFTP server holding `{snapshot-id}/` and `{snapshot-id}.partial/`.
    pub directory: String,
    /// Complete snapshots kept.
    pub retention: u32,
    /// Copy only documents whose version or size changed since the last
    /// complete snapshot; the others point at the snapshot holding them.
    #[serde(default = "yes")]
    pub incremental: bool,
    #[serde(default = "yes")]
    pub include_metadata: bool,
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Documents downloaded at once (and SFTP sessions used for them).
    #[serde(default = "default_parallelism")]
    pub parallelism: u32,
    /// Which versions of each document the snapshot holds.
    #[serde(default)]
    pub versions: Versions,
}

/// `"latest"` (the default): each document's latest version; `"all"`: every
/// version, one manifest line each, oldest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Versions {
    #[default]
    Latest,
    All,
}

fn yes() -> bool {
    true
}

fn default_page_size() -> u32 {
    100
}

fn default_parallelism() -> u32 {
    4
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupEvent {
    Scheduled(BackupConfig),
    Continue {
        backup: BackupConfig,
        snapshot_id: String,
    },
    Verify {
        backup: BackupConfig,
        snapshot_id: String,
        /// The job a continuation resumes (absent: a new verify).
        resume: Option<String>,
    },
    Restore {
        backup: BackupConfig,
        snapshot_id: String,
        target_folder: i64,
        /// Only this document (or every document below this container).
        node_id: Option<i64>,
        /// The job a continuation resumes (absent: a new restore).
        resume: Option<String>,
    },
}

impl BackupEvent {
    pub fn backup(&self) -> &BackupConfig {
        match self {
            BackupEvent::Scheduled(b) => b,
            BackupEvent::Continue { backup, .. }
            | BackupEvent::Verify { backup, .. }
            | BackupEvent::Restore { backup, .. } => backup,
        }
    }
}

fn err(field: &str, value: impl std::fmt::Display, problem: &str) -> RouteError {
    RouteError {
        field: field.to_owned(),
        value: value.to_string(),
        problem: problem.to_owned(),
        detail: None,
    }
}

impl BackupConfig {
    pub fn validate(&self) -> Result<(), RouteError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(err(
                "backup.name",
                &self.name,
                "must be 1-64 of [A-Za-z0-9_-]",
            ));
        }
        if self.roots.is_empty() {
            return Err(err(
                "backup.roots",
                "[]",
                "at least one root node is needed",
            ));
        }
        if let Some((i, r)) = self.roots.iter().enumerate().find(|(_, r)| **r <= 0) {
            return Err(err(
                &format!("backup.roots[{i}]"),
                r,
                "must be a positive node id",
            ));
        }
        let mut seen = BTreeSet::new();
        if let Some((i, r)) = self
            .roots
            .iter()
            .enumerate()
            .find(|(_, r)| !seen.insert(**r))
        {
            return Err(err(&format!("backup.roots[{i}]"), r, "is listed twice"));
        }
        if self.sftp_secret.trim().is_empty() {
            return Err(err(
                "backup.sftp_secret",
                &self.sftp_secret,
                "must not be empty",
            ));
        }
        let d = &self.directory;
        if d.is_empty()
            || d.starts_with('/')
            || d.contains('\\')
            || d.split('/').any(|s| s == ".." || s == ".")
            || d.chars().any(char::is_control)
        {
            return Err(err(
                "backup.directory",
                d.escape_debug(),
                "must be a relative path without '..'",
            ));
        }
        if !(1..=365).contains(&self.retention) {
            return Err(err(
                "backup.retention",
                self.retention,
                "must be within 1..=365",
            ));
        }
        if !(1..=1000).contains(&self.page_size) {
            return Err(err(
                "backup.page_size",
                self.page_size,
                "must be within 1..=1000",
            ));
        }
        if !(1..=16).contains(&self.parallelism) {
            return Err(err(
                "backup.parallelism",
                self.parallelism,
                "must be within 1..=16",
            ));
        }
        Ok(())
    }
}

/// The name of a snapshot's directory while it is being written.
pub fn partial_name(snapshot_id: &str) -> String {
    format!("{snapshot_id}.partial")
}

/// The name a pruned snapshot is renamed to before its files are removed, so
/// a crash mid-removal never leaves a half-deleted "complete" snapshot.
pub fn deleting_name(snapshot_id: &str) -> String {
    format!("{snapshot_id}.deleting")
}

/// What a backup directory holds, from the names listed in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectoryState {
    /// Complete snapshots, oldest first.
    pub complete: Vec<String>,
    /// Unfinished snapshots, oldest first.
    pub partial: Vec<String>,
    /// Pruned snapshots whose removal did not finish.
    pub deleting: Vec<String>,
    /// Snapshots an unfinished verify or restore job reads (its marker
    /// [`job_marker`] is in the directory): retention keeps them.
    pub in_use: Vec<String>,
}

/// The marker of an unfinished verify or restore job, beside the snapshots
/// (`.job-{kind}-{snapshot}-{job}`), so retention never deletes what a job
/// still reads.
pub fn job_marker(kind: &str, snapshot_id: &str, job: &str) -> String {
    format!(".job-{kind}-{snapshot_id}-{job}")
}

/// The snapshot a [`job_marker`] names.
pub fn job_marker_snapshot(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(".job-")?;
    let (_, rest) = rest.split_once('-')?;
    let id = rest.get(..16)?;
    (is_snapshot_id(id) && rest[16..].starts_with('-')).then_some(id)
}

impl DirectoryState {
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut st = DirectoryState::default();
        for n in names {
            if is_snapshot_id(n) {
                st.complete.push(n.to_owned());
            } else if let Some(id) = n.strip_suffix(".partial").filter(|s| is_snapshot_id(s)) {
                st.partial.push(id.to_owned());
            } else if let Some(id) = n.strip_suffix(".deleting").filter(|s| is_snapshot_id(s)) {
                st.deleting.push(id.to_owned());
            }
        }
        for v in [&mut st.complete, &mut st.partial, &mut st.deleting] {
            v.sort();
            v.dedup();
        }
        st
    }

    /// The newest complete snapshot: the base of an incremental one.
    pub fn latest_complete(&self) -> Option<&String> {
        self.complete.last()
    }
}

/// Given the names in the backup directory, the complete snapshots to delete so
/// that `retention` remain (oldest first). `.partial` directories and foreign
/// names are never touched here. See [`plan_retention`] for the rule that also
/// keeps what kept snapshots point at.
pub fn snapshots_to_prune(names: &[String], retention: u32) -> Vec<String> {
    plan_retention(
        &DirectoryState::from_names(names.iter().map(String::as_str)).complete,
        retention,
        &BTreeMap::new(),
    )
    .delete
}

/// What retention does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPlan {
    /// Complete snapshots to delete, oldest first.
    pub delete: Vec<String>,
    /// Snapshots beyond the count kept because a kept snapshot points at
    /// their bytes.
    pub kept_for_references: Vec<String>,
    /// Snapshots beyond the count kept because an unfinished verify or
    /// restore job reads them.
    #[serde(default)]
    pub kept_for_jobs: Vec<String>,
}

/// Keeps the newest `retention` complete snapshots and, transitively, every
/// snapshot whose bytes one of them points at (`references`: snapshot →
/// the snapshots its manifest lines name); everything else is deleted. With
/// `retention >= 1` the newest snapshot is always kept, so the only
/// complete snapshot is never deleted.
pub fn plan_retention(
    complete: &[String],
    retention: u32,
    references: &BTreeMap<String, BTreeSet<String>>,
) -> RetentionPlan {
    plan_retention_in_use(complete, retention, references, &BTreeSet::new())
}

/// [`plan_retention`], also keeping (with what they point at) the snapshots
/// `in_use` by unfinished verify or restore jobs.
pub fn plan_retention_in_use(
    complete: &[String],
    retention: u32,
    references: &BTreeMap<String, BTreeSet<String>>,
    in_use: &BTreeSet<String>,
) -> RetentionPlan {
    let mut sorted: Vec<&String> = complete.iter().collect();
    sorted.sort();
    sorted.dedup();
    let keep_n = (retention.max(1) as usize).min(sorted.len());
    let newest: BTreeSet<&String> = sorted[sorted.len() - keep_n..].iter().copied().collect();
    let mut kept: BTreeSet<String> = newest.iter().map(|s| (*s).clone()).collect();
    let used: Vec<String> = sorted
        .iter()
        .filter(|s| in_use.contains(**s) && !kept.contains(**s))
        .map(|s| (*s).clone())
        .collect();
    kept.extend(used.iter().cloned());
    let mut todo: Vec<String> = kept.iter().cloned().collect();
    while let Some(s) = todo.pop() {
        for r in references.get(&s).into_iter().flatten() {
            if kept.insert(r.clone()) {
                todo.push(r.clone());
            }
        }
    }
    RetentionPlan {
        delete: sorted
            .iter()
            .filter(|s| !kept.contains(**s))
            .map(|s| (*s).clone())
            .collect(),
        kept_for_references: sorted
            .iter()
            .filter(|s| kept.contains(**s) && !newest.contains(*s) && !used.contains(*s))
            .map(|s| (*s).clone())
            .collect(),
        kept_for_jobs: used,
    }
}

/// Progress of a snapshot, stored as `.checkpoint.json` in its `.partial`
/// directory and rewritten after each page, so a continuation (or the next
/// run after a crash) resumes where the previous invocation stopped. The walk
/// is depth-first over containers: `stack` holds the containers still to
/// list and the next page of each (the top is the last element).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub snapshot_id: String,
    /// The complete snapshot this one is incremental against, if any.
    pub base_snapshot: Option<String>,
    pub stack: Vec<Cursor>,
    /// Documents being copied when the checkpoint was written: a crash may
    /// have left their files complete without a manifest line.
    #[serde(default)]
    pub pending: Vec<Pending>,
    /// Manifest parts written (`.parts/000001.jsonl`, …) and their bytes.
    pub parts: u32,
    #[serde(default)]
    pub manifest_bytes: u64,
    pub counts: Counts,
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    pub invocations: u32,
    pub started_at: DateTime<Utc>,
    /// Written by earlier releases (a lease inside the checkpoint, check
    /// then write); read so their checkpoints still load, never written now:
    /// a run holds the plan's run lease file instead (taken atomically).
    #[serde(default)]
    pub lease: Option<Lease>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    pub node_id: i64,
    /// Path of the container inside the snapshot (`/`-separated, safe).
    pub path: String,
    /// The container's names from the root down, unsanitised.
    pub ecm_path: Vec<String>,
    /// Next page to fetch, from 1.
    pub page: u32,
    /// The container's child count when its first page was listed; a change
    /// means pages shifted and the container is listed again from page 1
    /// (documents already in the manifest are not copied twice).
    #[serde(default)]
    pub total_count: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub node_id: i64,
    pub version: u32,
    pub size: u64,
    /// Where it was going, and its unique alternative (see `copy`).
    pub path: String,
    pub alt_path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    /// Documents in the manifest.
    pub documents: u64,
    /// Their bytes (copied and referenced).
    pub bytes: u64,
    /// Documents whose bytes this snapshot holds.
    pub copied: u64,
    pub copied_bytes: u64,
    /// Documents pointing at an earlier snapshot's bytes.
    pub referenced: u64,
    pub skipped: u64,
    /// Containers listed (folders, workspaces).
    pub containers: u64,
    /// Nodes without content (shortcuts, URLs), not backed up.
    #[serde(default)]
    pub other_nodes: u64,
}

/// A document the ECM refused to serve, with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skipped {
    pub node_id: i64,
    pub ecm_path: Vec<String>,
    /// The version refused (with `versions: "all"`), when it is one version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub owner: String,
    pub until: DateTime<Utc>,
}

impl Checkpoint {
    /// A fresh checkpoint: every root still to walk, first page. `roots`
    /// are (node id, name) in configuration order.
    pub fn start(
        at: DateTime<Utc>,
        base_snapshot: Option<String>,
        roots: &[(i64, String)],
    ) -> Self {
        // Two roots of the same name (in different places) must not merge.
        let mut taken = BTreeSet::new();
        let mut stack: Vec<Cursor> = roots
            .iter()
            .map(|(id, name)| {
                let mut path = super::snapshot_names::root_segment(name, *id);
                if !taken.insert(path.to_lowercase()) {
                    path = super::snapshot_names::unique_segment(name, *id);
                    taken.insert(path.to_lowercase());
                }
                Cursor {
                    node_id: *id,
                    path,
                    ecm_path: vec![name.clone()],
                    page: 1,
                    total_count: None,
                }
            })
            .collect();
        // The walk pops from the end, so the first root goes last.
        stack.reverse();
        Checkpoint {
            snapshot_id: snapshot_id(at),
            base_snapshot,
            stack,
            pending: Vec::new(),
            parts: 0,
            manifest_bytes: 0,
            counts: Counts::default(),
            skipped: Vec::new(),
            invocations: 1,
            started_at: at,
            lease: None,
        }
    }

    /// Nothing left to walk or to recover: the snapshot can be finished.
    pub fn is_done(&self) -> bool {
        self.stack.is_empty() && self.pending.is_empty()
    }

    /// Whether another invocation holds the snapshot at `now`.
    pub fn held_by_other(&self, me: &str, now: DateTime<Utc>) -> Option<&Lease> {
        self.lease
            .as_ref()
            .filter(|l| l.owner != me && l.until > now)
    }
}

/// Incremental rule: a document version is copied unless the base snapshot
/// has the same node at the same version with the same size (`base_size`:
/// the size the base recorded for that node and version); then its bytes are
/// reused from the base and only the manifest line is carried over.
pub fn needs_copy(base_size: Option<u64>, size: u64) -> bool {
    base_size != Some(size)
}

/// Whether `s` can name a verify or restore job (`resume`).
pub fn is_job_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub const SNAPSHOT_FORMAT: &str = "xecm-snapshot/1";

/// `snapshot.json`: the summary of a complete snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSummary {
    pub format: String,
    pub snapshot_id: String,
    pub backup: String,
    pub roots: Vec<i64>,
    /// The snapshot this one was taken incrementally against.
    pub base_snapshot: Option<String>,
    /// Snapshots holding bytes this one's manifest points at.
    pub references: Vec<String>,
    pub counts: Counts,
    pub skipped: Vec<Skipped>,
    pub manifest_lines: u64,
    pub manifest_size: u64,
    pub manifest_sha256: String,
    pub include_metadata: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub invocations: u32,
}

/// The detail of the continuation event: exactly the event the next
/// invocation must receive (the rule passes `$.detail` to the function).
pub fn continuation_detail(backup: &BackupConfig, snapshot_id: &str) -> serde_json::Value {
    serde_json::json!({"action": "continue", "backup": backup, "snapshot_id": snapshot_id})
}

/// The continuation of a verify or restore job: its own event again, with
/// the job to resume (same detail-type and rule as a snapshot's).
pub fn job_continuation_detail(event: &BackupEvent, job: &str) -> Option<serde_json::Value> {
    match event {
        BackupEvent::Verify {
            backup,
            snapshot_id,
            ..
        } => Some(serde_json::json!({"action": "verify", "backup": backup,
            "snapshot_id": snapshot_id, "resume": job})),
        BackupEvent::Restore {
            backup,
            snapshot_id,
            target_folder,
            node_id,
            ..
        } => {
            let mut v = serde_json::json!({"action": "restore", "backup": backup,
                "snapshot_id": snapshot_id, "target_folder": target_folder, "resume": job});
            if let Some(n) = node_id {
                v["node_id"] = serde_json::json!(n);
            }
            Some(v)
        }
        _ => None,
    }
}

/// Parse a `backup-snapshot` invocation payload.
pub fn parse_backup_event(value: serde_json::Value) -> Result<BackupEvent, RouteError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        #[serde(rename = "$schema", default)]
        _schema: super::schema_ref::SchemaRef,
        #[serde(default)]
        action: Option<String>,
        backup: BackupConfig,
        #[serde(default)]
        snapshot_id: Option<String>,
        #[serde(default)]
        target_folder: Option<i64>,
        #[serde(default)]
        node_id: Option<i64>,
        #[serde(default)]
        resume: Option<String>,
    }
    let raw: Raw =
        serde_path_to_error::deserialize(value).map_err(|e| super::route::serde_error(e, ""))?;
    raw.backup.validate()?;
    let id = |s: Option<String>| match s {
        Some(s) if is_snapshot_id(&s) => Ok(s),
        Some(s) => Err(err(
            "snapshot_id",
            s,
            "is not a snapshot id (YYYYMMDDTHHMMSSZ)",
        )),
        None => Err(err("snapshot_id", "", "missing")),
    };
    let restore_only = |what: &str, present: bool| {
        if present {
            Err(err(
                what,
                "",
                "only restore events name a target folder or node",
            ))
        } else {
            Ok(())
        }
    };
    if raw.action.as_deref() != Some("restore") {
        restore_only("target_folder", raw.target_folder.is_some())?;
        restore_only("node_id", raw.node_id.is_some())?;
    }
    let resume = match raw.resume {
        Some(j) if !matches!(raw.action.as_deref(), Some("verify" | "restore")) => {
            return Err(err(
                "resume",
                j,
                "only verify and restore continuations resume a job",
            ));
        }
        Some(j) if !is_job_id(&j) => {
            return Err(err("resume", j, "is not a job id (1-64 of [A-Za-z0-9-])"));
        }
        r => r,
    };
    match raw.action.as_deref() {
        None if raw.snapshot_id.is_none() => Ok(BackupEvent::Scheduled(raw.backup)),
        None => Err(err(
            "snapshot_id",
            "",
            "only continue, verify and restore events name a snapshot",
        )),
        Some("continue") => Ok(BackupEvent::Continue {
            snapshot_id: id(raw.snapshot_id)?,
            backup: raw.backup,
        }),
        Some("verify") => Ok(BackupEvent::Verify {
            snapshot_id: id(raw.snapshot_id)?,
            backup: raw.backup,
            resume,
        }),
        Some("restore") => {
            let snapshot_id = id(raw.snapshot_id)?;
            let target_folder = match raw.target_folder {
                Some(t) if t > 0 => t,
                Some(t) => return Err(err("target_folder", t, "must be a positive node id")),
                None => return Err(err("target_folder", "", "missing")),
            };
            if let Some(n) = raw.node_id.filter(|n| *n <= 0) {
                return Err(err("node_id", n, "must be a positive node id"));
            }
            Ok(BackupEvent::Restore {
                backup: raw.backup,
                snapshot_id,
                target_folder,
                node_id: raw.node_id,
                resume,
            })
        }
        Some(other) => Err(err(
            "action",
            other,
            "unknown action (expected continue, verify or restore)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn cfg() -> serde_json::Value {
        json!({"name": "critical", "roots": [2000], "sftp_secret": "s", "directory": "backups/critical", "retention": 2})
    }

    fn ids(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn given_snapshot_time_when_id_made_then_sortable_and_recognised() {
        let a = snapshot_id(Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().unwrap());
        assert_eq!(a, "20260102T030405Z");
        assert!(is_snapshot_id(&a));
        for bad in [
            "20260102T030405Z.partial",
            "2026-01-02",
            "20260102X030405Z",
            "",
        ] {
            assert!(!is_snapshot_id(bad), "{bad}");
        }
    }

    #[test]
    fn given_more_snapshots_than_retention_when_pruned_then_oldest_complete_ones_only() {
        let names = ids(&[
            "20260103T000000Z",
            "20260101T000000Z",
            "20260104T000000Z.partial",
            "notes.txt",
            "20260102T000000Z",
        ]);
        assert_eq!(snapshots_to_prune(&names, 2), ids(&["20260101T000000Z"]));
        assert!(snapshots_to_prune(&names, 5).is_empty());
    }

    #[test]
    fn given_kept_incremental_pointing_at_old_snapshot_when_pruned_then_old_one_kept() {
        let complete = ids(&["20260101T000000Z", "20260102T000000Z", "20260103T000000Z"]);
        // The newest points at the oldest (an unchanged document since the first full).
        let refs: BTreeMap<String, BTreeSet<String>> = [(
            "20260103T000000Z".to_string(),
            ["20260101T000000Z".to_string()].into(),
        )]
        .into();
        let plan = plan_retention(&complete, 1, &refs);
        assert_eq!(plan.delete, ids(&["20260102T000000Z"]));
        assert_eq!(plan.kept_for_references, ids(&["20260101T000000Z"]));
        // Retention 0 is refused by validation; the rule still keeps the newest.
        let plan = plan_retention(&complete[..1], 0, &BTreeMap::new());
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn given_a_snapshot_an_unfinished_job_reads_when_pruned_then_kept_with_what_it_points_at() {
        let complete = ids(&["20260101T000000Z", "20260102T000000Z", "20260103T000000Z"]);
        let refs: BTreeMap<String, BTreeSet<String>> = [(
            "20260102T000000Z".to_string(),
            ["20260101T000000Z".to_string()].into(),
        )]
        .into();
        let in_use: BTreeSet<String> = ["20260102T000000Z".to_string()].into();
        let plan = plan_retention_in_use(&complete, 1, &refs, &in_use);
        assert!(plan.delete.is_empty(), "{plan:?}");
        assert_eq!(plan.kept_for_jobs, ids(&["20260102T000000Z"]));
        assert_eq!(plan.kept_for_references, ids(&["20260101T000000Z"]));
        let m = job_marker("restore", "20260102T000000Z", "20261204T190000Z-0a1b2c3d");
        assert_eq!(job_marker_snapshot(&m), Some("20260102T000000Z"));
        for bad in [
            ".job-verify",
            ".job-verify-2026-x",
            ".run-lease",
            "20260102T000000Z",
        ] {
            assert_eq!(job_marker_snapshot(bad), None, "{bad}");
        }
    }

    #[test]
    fn given_directory_names_when_read_then_complete_partial_and_deleting_apart() {
        let st = DirectoryState::from_names([
            "20260102T000000Z",
            "20260103T000000Z.partial",
            "20260101T000000Z.deleting",
            "20260101T000000Z",
            ".tmp",
        ]);
        assert_eq!(st.complete, ids(&["20260101T000000Z", "20260102T000000Z"]));
        assert_eq!(st.partial, ids(&["20260103T000000Z"]));
        assert_eq!(st.deleting, ids(&["20260101T000000Z"]));
        assert_eq!(
            st.latest_complete().map(String::as_str),
            Some("20260102T000000Z")
        );
    }

    #[test]
    fn given_new_snapshot_when_checkpoint_started_then_roots_stacked_in_order_and_round_trip() {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().unwrap();
        let c = Checkpoint::start(
            at,
            None,
            &[(3001, "Suppliers".into()), (3003, "Con/tracts".into())],
        );
        // Depth-first: the first root is on top of the stack (popped last-in).
        assert_eq!(c.stack.last().map(|x| x.node_id), Some(3001));
        assert_eq!(c.stack[0].path, "Con_tracts~3003");
        assert_eq!(c.stack[0].ecm_path, vec!["Con/tracts".to_string()]);
        assert_eq!(c.snapshot_id, "20260102T030405Z");
        assert!(!c.is_done());
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Checkpoint>(&text).unwrap(), c);
    }

    #[test]
    fn given_lease_when_checked_then_only_a_live_lease_of_another_blocks() {
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().unwrap();
        let mut c = Checkpoint::start(at, None, &[(1, "r".into())]);
        assert!(c.held_by_other("me", at).is_none());
        c.lease = Some(Lease {
            owner: "other".into(),
            until: at + chrono::Duration::seconds(60),
        });
        assert!(c.held_by_other("me", at).is_some());
        assert!(c.held_by_other("other", at).is_none());
        assert!(
            c.held_by_other("me", at + chrono::Duration::seconds(61))
                .is_none()
        );
    }

    #[test]
    fn given_base_record_when_version_or_size_differs_then_copied() {
        // The base's size for the same node and version, if it has them.
        assert!(!needs_copy(Some(10), 10));
        assert!(needs_copy(Some(10), 11));
        assert!(needs_copy(None, 1));
    }

    #[test]
    fn given_continuation_detail_when_parsed_back_then_it_is_the_continue_event() {
        let b: BackupConfig = serde_json::from_value(cfg()).unwrap();
        let detail = continuation_detail(&b, "20260102T030405Z");
        assert_eq!(
            parse_backup_event(detail).unwrap(),
            BackupEvent::Continue {
                backup: b,
                snapshot_id: "20260102T030405Z".into()
            }
        );
    }

    #[test]
    fn given_backup_events_when_parsed_then_actions_and_ids_checked() {
        assert!(matches!(
            parse_backup_event(json!({"backup": cfg()})).unwrap(),
            BackupEvent::Scheduled(_)
        ));
        let c = parse_backup_event(
            json!({"action": "continue", "backup": cfg(), "snapshot_id": "20260102T030405Z"}),
        )
        .unwrap();
        assert!(
            matches!(c, BackupEvent::Continue { ref snapshot_id, .. } if snapshot_id == "20260102T030405Z")
        );
        // A job's continuation is its own event plus the job to resume.
        let v = parse_backup_event(
            json!({"action": "verify", "backup": cfg(), "snapshot_id": "20260102T030405Z"}),
        )
        .unwrap();
        let detail = job_continuation_detail(&v, "20260102T030405Z-0a1b2c3d").unwrap();
        assert!(matches!(
            parse_backup_event(detail).unwrap(),
            BackupEvent::Verify { resume: Some(ref j), .. } if j == "20260102T030405Z-0a1b2c3d"
        ));
        let all = parse_backup_event(
            json!({"backup": {"name": "x", "roots": [1], "sftp_secret": "s",
            "directory": "d", "retention": 1, "versions": "all"}}),
        )
        .unwrap();
        assert_eq!(all.backup().versions, Versions::All);
        let r = parse_backup_event(json!({"action": "restore", "backup": cfg(), "snapshot_id": "20260102T030405Z", "target_folder": 3100, "node_id": 7})).unwrap();
        assert!(matches!(
            r,
            BackupEvent::Restore {
                target_folder: 3100,
                node_id: Some(7),
                ..
            }
        ));
        let bad = [
            (json!({"action": "verify", "backup": cfg()}), "snapshot_id"),
            (
                json!({"action": "verify", "backup": cfg(), "snapshot_id": "../x"}),
                "snapshot_id",
            ),
            (json!({"action": "wipe", "backup": cfg()}), "action"),
            (json!({"backup": cfg(), "extra": 1}), "extra"),
            (
                json!({"action": "restore", "backup": cfg(), "snapshot_id": "20260102T030405Z"}),
                "target_folder",
            ),
            (
                json!({"action": "restore", "backup": cfg(), "snapshot_id": "20260102T030405Z", "target_folder": -1}),
                "target_folder",
            ),
            (
                json!({"action": "verify", "backup": cfg(), "snapshot_id": "20260102T030405Z", "target_folder": 5}),
                "target_folder",
            ),
            (
                json!({"backup": {"name": "x", "roots": [], "sftp_secret": "s", "directory": "d", "retention": 1}}),
                "backup.roots",
            ),
            (json!({"backup": cfg(), "resume": "j1"}), "resume"),
            (
                json!({"action": "continue", "backup": cfg(), "snapshot_id": "20260102T030405Z", "resume": "j1"}),
                "resume",
            ),
            (
                json!({"action": "verify", "backup": cfg(), "snapshot_id": "20260102T030405Z", "resume": "../x"}),
                "resume",
            ),
            (
                json!({"backup": {"name": "x", "roots": [1], "sftp_secret": "s", "directory": "d", "retention": 1, "versions": "some"}}),
                "backup.versions",
            ),
            (
                json!({"backup": {"name": "x", "roots": [1, 1], "sftp_secret": "s", "directory": "d", "retention": 1}}),
                "backup.roots[1]",
            ),
            (
                json!({"backup": {"name": "x", "roots": [1], "sftp_secret": "s", "directory": "../d", "retention": 1}}),
                "backup.directory",
            ),
            (
                json!({"backup": {"name": "x", "roots": [1], "sftp_secret": "s", "directory": "d", "retention": 0}}),
                "backup.retention",
            ),
            (
                json!({"backup": {"name": "x", "roots": [1], "sftp_secret": "s", "directory": "d", "retention": 1, "parallelism": 0}}),
                "backup.parallelism",
            ),
        ];
        for (v, field) in bad {
            let e = parse_backup_event(v.clone()).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
        }
    }
}
