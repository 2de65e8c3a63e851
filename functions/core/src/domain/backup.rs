//! Backup job configuration (`backup-snapshot`), carried in the schedule's
//! input like an ingest route, and the pure snapshot decisions: snapshot ids
//! and which snapshots retention prunes.
//!
//! Events (see `events/backup-scheduled.json`):
//! - `{"backup": {...}}` — scheduled: start (or resume) a snapshot;
//! - `{"action":"continue","backup":{...},"snapshot_id":"..."}` — the
//!   continuation a run emits when its deadline nears;
//! - `{"action":"verify","backup":{...},"snapshot_id":"..."}` — manual re-hash.
//!
//! Snapshot ids are `YYYYMMDDTHHMMSSZ` (UTC), so lexical order is time order
//! and retention needs no parsing of dates from listings.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::route::RouteError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    pub name: String,
    /// Content Server node ids whose subtrees are backed up.
    pub roots: Vec<i64>,
    pub sftp_secret: String,
    /// Directory on the SFTP server holding `{snapshot-id}/` and `{snapshot-id}.partial/`.
    pub directory: String,
    /// Complete snapshots kept.
    pub retention: u32,
    /// Copy only nodes whose version changed since the previous manifest.
    #[serde(default = "yes")]
    pub incremental: bool,
    #[serde(default = "yes")]
    pub include_metadata: bool,
    #[serde(default = "default_page_size")]
    pub page_size: u32,
}

fn yes() -> bool {
    true
}

fn default_page_size() -> u32 {
    100
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
    },
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
        Ok(())
    }
}

/// Snapshot id for a snapshot started at `at`.
pub fn snapshot_id(at: DateTime<Utc>) -> String {
    at.format("%Y%m%dT%H%M%SZ").to_string()
}

/// Whether `s` is a snapshot id we wrote.
pub fn is_snapshot_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 => b == b'T',
            15 => b == b'Z',
            _ => b.is_ascii_digit(),
        })
}

/// Given the names in the backup directory, the complete snapshots to delete so
/// that `retention` remain (oldest first). `.partial` directories and foreign
/// names are never touched here.
pub fn snapshots_to_prune(names: &[String], retention: u32) -> Vec<String> {
    let mut complete: Vec<&String> = names.iter().filter(|n| is_snapshot_id(n)).collect();
    complete.sort();
    complete.dedup();
    let excess = complete.len().saturating_sub(retention as usize);
    complete.into_iter().take(excess).cloned().collect()
}

/// Progress of a snapshot, stored as `checkpoint.json` in its `.partial`
/// directory and rewritten after each page, so a continuation resumes where
/// the previous invocation stopped. The walk is depth-first over containers:
/// `stack` holds the containers still to list and the next page of each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub snapshot_id: String,
    /// The complete snapshot this one is incremental against, if any.
    pub base_snapshot: Option<String>,
    pub stack: Vec<Cursor>,
    pub files: u64,
    pub bytes: u64,
    pub copied: u64,
    pub invocations: u32,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    pub node_id: i64,
    /// Path of the container inside the snapshot (`/`-separated, safe).
    pub path: String,
    /// Next page to fetch, from 1.
    pub page: u32,
}

impl Checkpoint {
    /// A fresh checkpoint: every root still to walk, first page.
    pub fn start(
        backup: &BackupConfig,
        at: DateTime<Utc>,
        base_snapshot: Option<String>,
        root_names: &[String],
    ) -> Self {
        let mut stack: Vec<Cursor> = backup
            .roots
            .iter()
            .enumerate()
            .map(|(i, id)| Cursor {
                node_id: *id,
                // Root folders by name when known, else by id; always one safe segment.
                path: match root_names.get(i) {
                    Some(n) if !n.is_empty() => super::names::sftp_safe_name(n),
                    _ => id.to_string(),
                },
                page: 1,
            })
            .collect();
        // The walk pops from the end, so the first root goes last.
        stack.reverse();
        Checkpoint {
            snapshot_id: snapshot_id(at),
            base_snapshot,
            stack,
            files: 0,
            bytes: 0,
            copied: 0,
            invocations: 1,
            started_at: at,
        }
    }

    /// Nothing left to walk: the snapshot can be finished (renamed into place).
    pub fn is_done(&self) -> bool {
        self.stack.is_empty()
    }
}

/// Incremental rule: a document is copied unless the base snapshot has the
/// same node at the same version and size (then its bytes are reused from the
/// base and only the manifest line is carried over).
pub fn needs_copy(base: Option<&super::manifest::BackupRecord>, version: u32, size: u64) -> bool {
    !base.is_some_and(|b| b.version == version && b.size == size)
}

/// Parse a `backup-snapshot` invocation payload.
pub fn parse_backup_event(value: serde_json::Value) -> Result<BackupEvent, RouteError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        #[serde(default)]
        action: Option<String>,
        backup: BackupConfig,
        #[serde(default)]
        snapshot_id: Option<String>,
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
    match raw.action.as_deref() {
        None if raw.snapshot_id.is_none() => Ok(BackupEvent::Scheduled(raw.backup)),
        None => Err(err(
            "snapshot_id",
            "",
            "only continue and verify events name a snapshot",
        )),
        Some("continue") => Ok(BackupEvent::Continue {
            snapshot_id: id(raw.snapshot_id)?,
            backup: raw.backup,
        }),
        Some("verify") => Ok(BackupEvent::Verify {
            snapshot_id: id(raw.snapshot_id)?,
            backup: raw.backup,
        }),
        Some(other) => Err(err(
            "action",
            other,
            "unknown action (expected continue or verify)",
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
        let names: Vec<String> = [
            "20260103T000000Z",
            "20260101T000000Z",
            "20260104T000000Z.partial",
            "notes.txt",
            "20260102T000000Z",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            snapshots_to_prune(&names, 2),
            vec!["20260101T000000Z".to_string()]
        );
        assert!(snapshots_to_prune(&names, 5).is_empty());
    }

    #[test]
    fn given_new_snapshot_when_checkpoint_started_then_roots_stacked_in_order_and_round_trip() {
        let b: BackupConfig = serde_json::from_value(json!({"name": "c", "roots": [3001, 3003], "sftp_secret": "s", "directory": "d", "retention": 2})).unwrap();
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().unwrap();
        let c = Checkpoint::start(&b, at, None, &["Suppliers".into(), "Con/tracts".into()]);
        // Depth-first: the first root is on top of the stack (popped last-in).
        assert_eq!(c.stack.last().map(|x| x.node_id), Some(3001));
        assert_eq!(c.stack[0].path, "Con_tracts");
        assert_eq!(c.snapshot_id, "20260102T030405Z");
        assert!(!c.is_done());
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Checkpoint>(&text).unwrap(), c);
    }

    #[test]
    fn given_base_record_when_version_or_size_differs_then_copied() {
        use crate::domain::manifest::BackupRecord;
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().unwrap();
        let r = BackupRecord {
            node_id: 1,
            path: "a".into(),
            version: 2,
            size: 10,
            sha256: "ab".repeat(32),
            modified: at,
            metadata: Default::default(),
        };
        assert!(!needs_copy(Some(&r), 2, 10));
        assert!(needs_copy(Some(&r), 3, 10));
        assert!(needs_copy(Some(&r), 2, 11));
        assert!(needs_copy(None, 1, 1));
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
        let bad = [
            (json!({"action": "verify", "backup": cfg()}), "snapshot_id"),
            (
                json!({"action": "verify", "backup": cfg(), "snapshot_id": "../x"}),
                "snapshot_id",
            ),
            (json!({"action": "wipe", "backup": cfg()}), "action"),
            (json!({"backup": cfg(), "extra": 1}), "extra"),
            (
                json!({"backup": {"name": "x", "roots": [], "sftp_secret": "s", "directory": "d", "retention": 1}}),
                "backup.roots",
            ),
            (
                json!({"backup": {"name": "x", "roots": [1], "sftp_secret": "s", "directory": "../d", "retention": 1}}),
                "backup.directory",
            ),
            (
                json!({"backup": {"name": "x", "roots": [1], "sftp_secret": "s", "directory": "d", "retention": 0}}),
                "backup.retention",
            ),
        ];
        for (v, field) in bad {
            let e = parse_backup_event(v.clone()).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
        }
    }
}
