//! The export history on a node and the delivery lease: pure decisions about
//! whether a version may go to a destination, with no I/O.
//!
//! The history keeps one record per (route, destination, version) in a
//! multi-value text attribute (`deliveries`), besides the single-value "last
//! export" attributes people read in the UI. A callback for a version that
//! has a record is a duplicate; a callback for a version older than the
//! newest recorded for that destination is superseded (an older version never
//! replaces a newer one at the partner). Only a manual resend goes past both.
//!
//! The list is bounded (a Content Server multi-value attribute has a maximum
//! number of values): when it is full, the oldest records go first, but the
//! newest record of every destination stays, so the "never older" rule keeps
//! holding for versions whose own record was pruned.
//!
//! The lease is a small dot-file beside the delivery on the SFTP server,
//! created with a no-replace rename (so exactly one of two overlapping
//! callbacks creates it) and expiring on its own, so a crashed holder blocks
//! nobody for longer than its invocation could have lasted.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::export_route::ExportHistoryConfig;
use super::names::sftp_safe_name;

/// Records kept when the route config does not say.
pub const DEFAULT_MAX_DELIVERIES: usize = 50;

/// One delivery: through which `<route>/<destination>`, which version, the
/// SHA-256 of the bytes delivered and the path they went to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub to: String,
    pub version: u32,
    pub sha256: String,
    pub path: String,
}

impl DeliveryRecord {
    /// One attribute value: a compact JSON array `["to",version,"sha","path"]`
    /// (unambiguous whatever the names and paths hold).
    pub fn encode(&self) -> String {
        serde_json::json!([self.to, self.version, self.sha256, self.path]).to_string()
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let (to, version, sha256, path): (String, u32, String, String) = serde_json::from_str(text)
            .map_err(|e| {
                format!(
                    "not a delivery record [\"route/destination\",version,\"sha256\",\"path\"]: {e}"
                )
            })?;
        if to.is_empty() || !to.contains('/') {
            return Err(format!("{to:?} is not <route>/<destination>"));
        }
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{sha256:?} is not a hex SHA-256"));
        }
        Ok(Self {
            to,
            version,
            sha256: sha256.to_ascii_lowercase(),
            path,
        })
    }
}

/// What the history says about delivering `version` through a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryVerdict {
    /// Nothing recorded for this version or a newer one: deliver.
    New,
    /// This version already went there.
    Delivered(DeliveryRecord),
    /// A newer version already went there; this one must not replace it.
    Superseded(DeliveryRecord),
}

/// The export history as read from the node's category values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportHistory {
    /// Oldest first.
    pub records: Vec<DeliveryRecord>,
    /// Values of the `deliveries` attribute that are not records (kept as
    /// they are on the next write, and reported in the log).
    pub malformed: Vec<String>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `<route>/<destination>` as the history records it.
pub fn destination_key(route: &str, destination: &str) -> String {
    format!("{route}/{destination}")
}

impl ExportHistory {
    /// Reads the history from the export-history category's values (`None`
    /// when the category is not applied yet). The single-value "last export"
    /// attributes count as a record too, so nodes delivered before the
    /// per-version list existed keep their protection.
    pub fn from_values(
        cfg: &ExportHistoryConfig,
        values: Option<&BTreeMap<String, Value>>,
    ) -> Self {
        let mut out = Self::default();
        let Some(values) = values else {
            return out;
        };
        let key = |id: u32| format!("{}_{id}", cfg.category_id);
        let a = &cfg.attributes;
        match values.get(&key(a.deliveries)) {
            Some(Value::Array(items)) => {
                for item in items {
                    if let Some(t) = text(item) {
                        match DeliveryRecord::parse(&t) {
                            Ok(r) => out.records.push(r),
                            Err(_) => out.malformed.push(t),
                        }
                    }
                }
            }
            Some(v) => {
                if let Some(t) = text(v) {
                    match DeliveryRecord::parse(&t) {
                        Ok(r) => out.records.push(r),
                        Err(_) => out.malformed.push(t),
                    }
                }
            }
            None => {}
        }
        // The legacy "last export" record.
        let last = (|| {
            let dest = values.get(&key(a.destination)).and_then(text)?;
            let (to, path) = dest.split_once(':')?;
            let version: u32 = values.get(&key(a.version)).and_then(text)?.parse().ok()?;
            let sha = values.get(&key(a.sha256)).and_then(text)?;
            DeliveryRecord::parse(
                &DeliveryRecord {
                    to: to.to_owned(),
                    version,
                    sha256: sha,
                    path: path.to_owned(),
                }
                .encode(),
            )
            .ok()
        })();
        if let Some(l) = last
            && !out
                .records
                .iter()
                .any(|r| r.to == l.to && r.version == l.version)
        {
            out.records.insert(0, l);
        }
        out
    }

    /// Whether `version` may go through `to` (see [`HistoryVerdict`]).
    pub fn verdict(&self, to: &str, version: u32) -> HistoryVerdict {
        if let Some(r) = self
            .records
            .iter()
            .rev()
            .find(|r| r.to == to && r.version == version)
        {
            return HistoryVerdict::Delivered(r.clone());
        }
        match self.newest(to) {
            Some(n) if n.version > version => HistoryVerdict::Superseded(n.clone()),
            _ => HistoryVerdict::New,
        }
    }

    /// The newest version recorded for `to`.
    pub fn newest(&self, to: &str) -> Option<&DeliveryRecord> {
        self.records
            .iter()
            .filter(|r| r.to == to)
            .max_by_key(|r| r.version)
    }

    /// The SHA-256 of `version` as some earlier delivery of it measured
    /// (versions do not change, so any destination's record will do).
    pub fn sha256_of(&self, version: u32) -> Option<&str> {
        self.records
            .iter()
            .rev()
            .find(|r| r.version == version)
            .map(|r| r.sha256.as_str())
    }

    /// The list after recording `record` (replacing an earlier record of the
    /// same destination and version), at most `max` long.
    pub fn with(&self, record: DeliveryRecord, max: usize) -> Vec<DeliveryRecord> {
        let mut list: Vec<DeliveryRecord> = self
            .records
            .iter()
            .filter(|r| !(r.to == record.to && r.version == record.version))
            .cloned()
            .collect();
        list.push(record);
        let max = max.max(1);
        while list.len() > max {
            // The oldest record that is not its destination's newest.
            let victim = (0..list.len()).find(|&i| {
                let r = &list[i];
                list.iter().any(|o| o.to == r.to && o.version > r.version)
            });
            match victim {
                Some(i) => {
                    list.remove(i);
                }
                None => {
                    list.remove(0);
                }
            }
        }
        list
    }

    /// Every category value to write for a delivery: the "last export"
    /// attributes and the full list of records.
    pub fn values_after(
        &self,
        cfg: &ExportHistoryConfig,
        record: DeliveryRecord,
        at: DateTime<Utc>,
    ) -> BTreeMap<String, Value> {
        let key = |id: u32| format!("{}_{id}", cfg.category_id);
        let a = &cfg.attributes;
        let max = cfg
            .max_deliveries
            .map_or(DEFAULT_MAX_DELIVERIES, |m| m as usize);
        let mut items: Vec<Value> = self
            .malformed
            .iter()
            .take(max.saturating_sub(1))
            .map(|m| Value::String(m.clone()))
            .collect();
        let room = max.saturating_sub(items.len()).max(1);
        let last = format!("{}:{}", record.to, record.path);
        let (version, sha) = (record.version, record.sha256.clone());
        items.extend(
            self.with(record, room)
                .iter()
                .map(|r| Value::String(r.encode())),
        );
        BTreeMap::from([
            (key(a.version), Value::from(version)),
            (
                key(a.exported_at),
                Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            ),
            (key(a.destination), Value::String(last)),
            (key(a.sha256), Value::String(sha)),
            (key(a.deliveries), Value::Array(items)),
        ])
    }
}

// ------------------------------------------------------------------ lease --

/// The lease file's name in the destination directory: one per route,
/// destination and node, so every version of a node goes to a destination
/// one at a time (an overlapping v1 waits for v2 and then finds itself
/// superseded instead of replacing it).
pub fn lease_name(route: &str, destination: &str, node_id: i64) -> String {
    format!(
        ".{}",
        sftp_safe_name(&format!("xecm-lease-{route}-{destination}-{node_id}"))
    )
}

/// What a lease file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub node_id: i64,
    pub version: u32,
    /// The invocation holding it.
    pub holder: String,
    /// Random, tells this holder's lease from a later one of the same holder.
    pub nonce: String,
    pub expires_at: DateTime<Utc>,
    /// Set once `Document Exported` went out for this delivery (SHA-256 of
    /// the bytes delivered): a holder that stops after the event and before
    /// the history leaves this behind, so the next holder records the
    /// history without a second event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_sha256: Option<String>,
}

impl Lease {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a lease: {e}"))
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        now >= self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::export_route::ExportHistoryAttributes;
    use serde_json::json;

    fn cfg() -> ExportHistoryConfig {
        ExportHistoryConfig {
            category_id: 9003,
            attributes: ExportHistoryAttributes {
                version: 2,
                exported_at: 3,
                destination: 4,
                sha256: 5,
                deliveries: 6,
            },
            max_deliveries: Some(4),
        }
    }

    fn rec(to: &str, v: u32) -> DeliveryRecord {
        DeliveryRecord {
            to: to.into(),
            version: v,
            sha256: format!("{v:064x}"),
            path: format!("out/a_v{v}.pdf"),
        }
    }

    #[test]
    fn every_version_keeps_its_record_and_older_ones_are_superseded() {
        let h = ExportHistory::default();
        let v1 = ExportHistory {
            records: h.with(rec("r/d", 1), 10),
            ..Default::default()
        };
        let v2 = ExportHistory {
            records: v1.with(rec("r/d", 2), 10),
            ..Default::default()
        };
        assert_eq!(
            v2.verdict("r/d", 2),
            HistoryVerdict::Delivered(rec("r/d", 2))
        );
        assert_eq!(
            v2.verdict("r/d", 1),
            HistoryVerdict::Delivered(rec("r/d", 1))
        );
        assert_eq!(v2.verdict("r/d", 3), HistoryVerdict::New);
        // Another destination is independent.
        assert_eq!(v2.verdict("r/other", 1), HistoryVerdict::New);
        let only_v2 = ExportHistory {
            records: vec![rec("r/d", 2)],
            ..Default::default()
        };
        assert_eq!(
            only_v2.verdict("r/d", 1),
            HistoryVerdict::Superseded(rec("r/d", 2))
        );
    }

    #[test]
    fn values_round_trip_and_the_legacy_record_counts() {
        let at = Utc::now();
        let h = ExportHistory::from_values(&cfg(), None);
        let vals = h.values_after(&cfg(), rec("r/d", 1), at);
        assert_eq!(vals["9003_2"], json!(1));
        assert_eq!(vals["9003_4"], json!("r/d:out/a_v1.pdf"));
        let back = ExportHistory::from_values(&cfg(), Some(&vals));
        assert_eq!(back.records, vec![rec("r/d", 1)]);
        // Only the legacy attributes (a node delivered by an older release).
        let legacy: BTreeMap<String, Value> = [
            ("9003_2".to_string(), json!(3)),
            ("9003_4".to_string(), json!("r/d:out/a_v3.pdf")),
            ("9003_5".to_string(), json!(format!("{:064x}", 3))),
        ]
        .into();
        let h = ExportHistory::from_values(&cfg(), Some(&legacy));
        assert_eq!(
            h.verdict("r/d", 3),
            HistoryVerdict::Delivered(rec("r/d", 3))
        );
        assert!(matches!(h.verdict("r/d", 2), HistoryVerdict::Superseded(_)));
    }

    #[test]
    fn a_full_list_drops_the_oldest_but_keeps_each_destinations_newest() {
        let mut h = ExportHistory::default();
        h.records = h.with(rec("r/a", 1), 4);
        for v in 1..=6 {
            h.records = h.with(rec("r/b", v), 4);
        }
        assert_eq!(h.records.len(), 4);
        assert!(h.records.contains(&rec("r/a", 1)), "{:?}", h.records);
        assert!(h.records.contains(&rec("r/b", 6)));
        // A pruned old version is still refused: a newer one is recorded.
        assert!(matches!(h.verdict("r/b", 1), HistoryVerdict::Superseded(_)));
    }

    #[test]
    fn malformed_values_are_kept_and_records_are_checked() {
        assert!(DeliveryRecord::parse("garbage").is_err());
        assert!(DeliveryRecord::parse(r#"["r/d",1,"xyz","p"]"#).is_err());
        assert!(DeliveryRecord::parse(r#"["rd",1,"00","p"]"#).is_err());
        let vals: BTreeMap<String, Value> = [(
            "9003_6".to_string(),
            json!(["garbage", rec("r/d", 1).encode()]),
        )]
        .into();
        let h = ExportHistory::from_values(&cfg(), Some(&vals));
        assert_eq!(h.records, vec![rec("r/d", 1)]);
        assert_eq!(h.malformed, vec!["garbage".to_string()]);
        let out = h.values_after(&cfg(), rec("r/d", 2), Utc::now());
        assert_eq!(out["9003_6"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn leases_round_trip_and_expire() {
        let now = Utc::now();
        let l = Lease {
            node_id: 7,
            version: 2,
            holder: "inv".into(),
            nonce: "n".into(),
            expires_at: now + chrono::Duration::seconds(30),
            published_sha256: None,
        };
        assert_eq!(Lease::parse(&l.to_bytes()), Ok(l.clone()));
        assert!(!l.is_expired(now));
        assert!(l.is_expired(now + chrono::Duration::seconds(31)));
        assert!(Lease::parse(b"{}").is_err());
        assert!(lease_name("r", "d", 7).starts_with('.'));
    }
}
