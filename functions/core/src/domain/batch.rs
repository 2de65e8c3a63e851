//! From one directory listing to this invocation's work: sort the entries by
//! role (documents, done-markers, sidecars, index files), pick the batch
//! within the route's limits, and decide when to stop claiming because the
//! Lambda deadline is near.
//!
//! Decisions:
//! - Oldest first (mtime, then path), so a backlog drains in arrival order and
//!   no file starves behind newer ones.
//! - `max_bytes` is a soft cap: a single file larger than it still goes when
//!   it is first in the batch, otherwise it could never be ingested.
//! - A marker, sidecar or index without its document is left alone; the
//!   companions of an ingested document move with it (see [`companions`]).

use std::collections::{BTreeMap, BTreeSet};

use super::route::{EntryRole, LimitsConfig, Route, SidecarFormat};

/// One entry of a listing, path relative to `source_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub rel_path: String,
    pub size: u64,
    /// Unix seconds.
    pub mtime: i64,
}

/// A listing sorted by role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub documents: Vec<Listed>,
    /// Documents (by path) whose done-marker is present.
    pub markers: BTreeSet<String>,
    /// Document path → its sidecars, in listing order.
    pub sidecars: BTreeMap<String, Vec<(SidecarFormat, String)>>,
    pub indexes: Vec<Listed>,
    /// Entries skipped, with the reason, for a debug log.
    pub ignored: Vec<(String, &'static str)>,
}

pub fn inventory(route: &Route, listing: &[Listed]) -> Inventory {
    let mut inv = Inventory::default();
    for e in listing {
        match route.entry_role(&e.rel_path) {
            EntryRole::Document => inv.documents.push(e.clone()),
            EntryRole::Marker { document } => {
                inv.markers.insert(document);
            }
            EntryRole::Sidecar { document, format } => inv
                .sidecars
                .entry(document)
                .or_default()
                .push((format, e.rel_path.clone())),
            EntryRole::Index => inv.indexes.push(e.clone()),
            EntryRole::Ignored(why) => inv.ignored.push((e.rel_path.clone(), why)),
        }
    }
    inv
}

/// The marker and sidecar paths that belong to a document and go wherever it goes.
pub fn companions(route: &Route, inv: &Inventory, rel_path: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(m) = &route.config.readiness.done_marker
        && inv.markers.contains(rel_path)
    {
        out.push(format!("{rel_path}{m}"));
    }
    if let Some(s) = inv.sidecars.get(rel_path) {
        out.extend(s.iter().map(|(_, p)| p.clone()));
    }
    out
}

/// Pick this invocation's batch from the ready documents.
pub fn select_batch(mut ready: Vec<Listed>, limits: &LimitsConfig) -> Vec<Listed> {
    ready.sort_by(|a, b| {
        a.mtime
            .cmp(&b.mtime)
            .then_with(|| a.rel_path.cmp(&b.rel_path))
    });
    let mut out = Vec::new();
    let mut bytes: u64 = 0;
    for f in ready {
        if out.len() >= limits.max_files as usize {
            break;
        }
        if !out.is_empty() && bytes.saturating_add(f.size) > limits.max_bytes {
            continue;
        }
        bytes = bytes.saturating_add(f.size);
        out.push(f);
    }
    out
}

/// Whether to claim another file: only if the time left covers the expected
/// transfer time of a file plus a safety margin for the post-action and the
/// event. Times in milliseconds.
pub fn may_claim_more(
    now_ms: u64,
    deadline_ms: u64,
    expected_file_ms: u64,
    safety_ms: u64,
) -> bool {
    deadline_ms.saturating_sub(now_ms) > expected_file_ms.saturating_add(safety_ms)
}

/// A conservative estimate of one file's transfer time: size at the slower of
/// the measured SFTP and ECM rates, plus fixed per-file overhead (claim,
/// lookups, verify, archive).
pub fn expected_file_ms(size: u64, bytes_per_sec: u64, per_file_overhead_ms: u64) -> u64 {
    let rate = bytes_per_sec.max(1);
    (size.saturating_mul(1000) / rate).saturating_add(per_file_overhead_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::route::{RouteConfig, tests::sample};

    fn l(p: &str, size: u64, mtime: i64) -> Listed {
        Listed {
            rel_path: p.into(),
            size,
            mtime,
        }
    }

    fn route() -> Route {
        serde_json::from_value::<RouteConfig>(sample())
            .unwrap()
            .validate()
            .unwrap()
    }

    #[test]
    fn given_listing_when_inventoried_then_entries_sorted_by_role() {
        let r = route();
        let inv = inventory(
            &r,
            &[
                l("a/INV-1_A.pdf", 10, 1),
                l("a/INV-1_A.pdf.done", 0, 1),
                l("a/INV-1_A.pdf.json", 5, 1),
                l("a/index-1.csv", 50, 1),
                l(".inflight/1-a1-00000000-x/a/INV-2_A.pdf", 10, 1),
                l("orphan.pdf.done", 0, 1),
            ],
        );
        assert_eq!(inv.documents, vec![l("a/INV-1_A.pdf", 10, 1)]);
        assert!(inv.markers.contains("a/INV-1_A.pdf") && inv.markers.contains("orphan.pdf"));
        assert_eq!(
            inv.sidecars["a/INV-1_A.pdf"],
            vec![(SidecarFormat::Json, "a/INV-1_A.pdf.json".to_string())]
        );
        assert_eq!(inv.indexes.len(), 1);
        assert_eq!(inv.ignored.len(), 1);
        assert_eq!(
            companions(&r, &inv, "a/INV-1_A.pdf"),
            vec![
                "a/INV-1_A.pdf.done".to_string(),
                "a/INV-1_A.pdf.json".to_string()
            ]
        );
        assert!(companions(&r, &inv, "none.pdf").is_empty());
    }

    #[test]
    fn given_backlog_when_batch_selected_then_oldest_first_within_limits() {
        let limits = LimitsConfig {
            max_files: 2,
            max_bytes: 100,
            ..LimitsConfig::default()
        };
        let b = select_batch(vec![l("c", 10, 3), l("a", 10, 1), l("b", 10, 1)], &limits);
        assert_eq!(
            b.iter().map(|f| f.rel_path.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        let b = select_batch(
            vec![l("big", 90, 1), l("next", 20, 2), l("small", 10, 3)],
            &limits,
        );
        assert_eq!(
            b.iter().map(|f| f.rel_path.as_str()).collect::<Vec<_>>(),
            vec!["big", "small"]
        );
    }

    #[test]
    fn given_file_larger_than_byte_cap_when_first_then_still_selected() {
        let limits = LimitsConfig {
            max_files: 5,
            max_bytes: 100,
            ..LimitsConfig::default()
        };
        let b = select_batch(vec![l("huge", 1000, 1), l("x", 1, 2)], &limits);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].rel_path, "huge");
    }

    #[test]
    fn given_deadline_when_little_time_left_then_stop_claiming() {
        assert!(may_claim_more(0, 60_000, 10_000, 5_000));
        assert!(!may_claim_more(50_000, 60_000, 10_000, 5_000));
        assert!(!may_claim_more(70_000, 60_000, 0, 0));
        assert_eq!(expected_file_ms(100_000_000, 50_000_000, 500), 2_500);
        assert_eq!(expected_file_ms(1, 0, 0), 1_000);
    }
}
