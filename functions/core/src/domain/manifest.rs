//! Manifests: the `manifest.json` of an export package and the JSON-lines
//! manifest of a backup snapshot, plus the path rules for entries of both
//! (and of zip packages).
//!
//! Entry paths are built from Content Server names, which may contain `/`,
//! `\`, `:`, `..` and anything else. Each node name becomes one segment via
//! [`sftp_safe_name`]; the result is checked by [`is_safe_entry_path`], the
//! same check a reader applies to a manifest or zip it did not write. That rules
//! out zip-slip: no absolute path, no drive letter, no backslash, no `.`/`..`
//! segment, no NUL or control character. Two siblings whose safe names collide
//! (case-insensitively, for Windows and macOS receivers) are numbered.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::names::{SFTP_NAME_MAX_BYTES, numbered, sftp_safe_name};

pub const PACKAGE_MANIFEST_FORMAT: &str = "xecm-package/1";
pub const PACKAGE_MANIFEST_NAME: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest entry {index}: unsafe path {path:?}")]
    UnsafePath { index: usize, path: String },
    #[error("manifest entry {index}: path {path:?} listed twice")]
    Duplicate { index: usize, path: String },
    #[error("manifest entry {index}: sha256 {sha256:?} is not 64 lowercase hex digits")]
    BadDigest { index: usize, sha256: String },
    #[error("manifest format {found:?} is not {PACKAGE_MANIFEST_FORMAT:?}")]
    Format { found: String },
    #[error("manifest line {line}: {problem}")]
    Line { line: usize, problem: String },
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
}

impl ManifestError {
    /// A malformed manifest stays malformed.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// One file of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageEntry {
    /// Path inside the package, `/`-separated, safe (see module docs).
    pub path: String,
    pub node_id: i64,
    /// The node's name in Content Server, unsanitised.
    pub name: String,
    pub version: u32,
    pub size: u64,
    pub sha256: String,
}

/// `manifest.json` of a package directory or zip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageManifest {
    pub format: String,
    pub package: String,
    pub route: String,
    pub root_node_id: i64,
    pub created_at: DateTime<Utc>,
    pub entries: Vec<PackageEntry>,
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `path` is safe as a relative entry path (package, zip, snapshot).
pub fn is_safe_entry_path(path: &str) -> bool {
    if path.is_empty() || path.starts_with('/') || path.contains('\\') {
        return false;
    }
    // `C:foo` or `C:/foo`: a drive letter.
    let b = path.as_bytes();
    if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
        return false;
    }
    path.split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg.len() <= 255
            && !seg.chars().any(|c| c.is_control())
    })
}

/// Build safe, unique entry paths from node-name paths (each a list of names
/// from the package root down). Order is kept; collisions get `name (2).ext`.
pub fn entry_paths(name_paths: &[Vec<String>]) -> Vec<String> {
    // The manifest sits at the package root under this name.
    let mut taken: BTreeSet<String> = BTreeSet::from([PACKAGE_MANIFEST_NAME.to_owned()]);
    let mut out = Vec::with_capacity(name_paths.len());
    for names in name_paths {
        let segments: Vec<String> = names.iter().map(|n| sftp_safe_name(n)).collect();
        let base = if segments.is_empty() {
            "unnamed".to_owned()
        } else {
            segments.join("/")
        };
        let mut candidate = base.clone();
        let mut n = 2;
        while taken.contains(&candidate.to_lowercase()) {
            let (dir, file) = match base.rsplit_once('/') {
                Some((d, f)) => (format!("{d}/"), f.to_owned()),
                None => (String::new(), base.clone()),
            };
            candidate = format!("{dir}{}", numbered(&file, n, SFTP_NAME_MAX_BYTES));
            n += 1;
        }
        taken.insert(candidate.to_lowercase());
        out.push(candidate);
    }
    out
}

impl PackageManifest {
    /// Check format, paths and digests (also for a manifest read back).
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != PACKAGE_MANIFEST_FORMAT {
            return Err(ManifestError::Format {
                found: self.format.clone(),
            });
        }
        let mut seen = BTreeSet::new();
        for (index, e) in self.entries.iter().enumerate() {
            if !is_safe_entry_path(&e.path) || e.path == PACKAGE_MANIFEST_NAME {
                return Err(ManifestError::UnsafePath {
                    index,
                    path: e.path.clone(),
                });
            }
            if !seen.insert(e.path.to_lowercase()) {
                return Err(ManifestError::Duplicate {
                    index,
                    path: e.path.clone(),
                });
            }
            if !is_sha256_hex(&e.sha256) {
                return Err(ManifestError::BadDigest {
                    index,
                    sha256: e.sha256.clone(),
                });
            }
        }
        Ok(())
    }

    pub fn total_size(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// Pretty JSON, validated first so we never write a manifest we would refuse.
    pub fn to_json(&self) -> Result<String, ManifestError> {
        self.validate()?;
        serde_json::to_string_pretty(self).map_err(|e| ManifestError::Json(e.to_string()))
    }

    pub fn from_json(text: &str) -> Result<Self, ManifestError> {
        let m: PackageManifest =
            serde_json::from_str(text).map_err(|e| ManifestError::Json(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }
}

/// One line of a backup snapshot's `manifest.jsonl`: one document version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRecord {
    pub node_id: i64,
    /// The document's names in Content Server from the backed-up root down,
    /// unsanitised (a name may itself contain `/`).
    pub ecm_path: Vec<String>,
    /// Path of the bytes inside the snapshot that holds them (safe, see
    /// module docs).
    pub path: String,
    /// The snapshot holding the bytes when it is not this one (an unchanged
    /// document of an incremental snapshot); always a complete snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    pub version: u32,
    pub size: u64,
    pub sha256: String,
    /// The ECM's modify date, verbatim (servers send local time without offset).
    #[serde(default)]
    pub modified: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// With `include_metadata`: `categories` (`[{category_id, values}]`) and
    /// `rm_classifications` (`[id]`), as read from the ECM.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

fn is_snapshot_ref(s: &str) -> bool {
    s.len() == 16
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 => b == b'T',
            15 => b == b'Z',
            _ => b.is_ascii_digit(),
        })
}

impl BackupRecord {
    fn check(&self, line: usize) -> Result<(), ManifestError> {
        let problem = if !is_safe_entry_path(&self.path) {
            Some(format!("unsafe path {:?}", self.path))
        } else if !is_sha256_hex(&self.sha256) {
            Some(format!("bad sha256 {:?}", self.sha256))
        } else if self.node_id <= 0 {
            Some(format!("node id {} is not positive", self.node_id))
        } else if self.ecm_path.is_empty() {
            Some("ecm_path is empty".to_owned())
        } else {
            self.snapshot
                .as_deref()
                .filter(|s| !is_snapshot_ref(s))
                .map(|s| format!("snapshot {s:?} is not a snapshot id"))
        };
        match problem {
            Some(problem) => Err(ManifestError::Line { line, problem }),
            None => Ok(()),
        }
    }

    /// One line, newline-terminated.
    pub fn to_line(&self) -> Result<String, ManifestError> {
        self.check(0)?;
        let mut s = serde_json::to_string(self).map_err(|e| ManifestError::Json(e.to_string()))?;
        s.push('\n');
        Ok(s)
    }

    /// The snapshot holding the bytes, `this` when the line names none.
    pub fn holder<'a>(&'a self, this: &'a str) -> &'a str {
        self.snapshot.as_deref().unwrap_or(this)
    }
}

/// Parse a JSON-lines manifest (for incremental snapshots and `verify`).
/// Blank lines are skipped; a truncated last line (a crash mid-write) is an
/// error naming that line, so a checkpoint is never trusted past it.
pub fn parse_backup_manifest(text: &str) -> Result<Vec<BackupRecord>, ManifestError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse_backup_line(line, i + 1)?);
    }
    Ok(out)
}

/// Parses and checks line `line_no` (from 1) of a backup manifest; the
/// streaming readers use it one line at a time.
pub fn parse_backup_line(line: &str, line_no: usize) -> Result<BackupRecord, ManifestError> {
    let r: BackupRecord = serde_json::from_str(line).map_err(|e| ManifestError::Line {
        line: line_no,
        problem: e.to_string(),
    })?;
    r.check(line_no)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn t() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0)
            .single()
            .unwrap()
    }

    #[test]
    fn given_hostile_node_names_when_entry_paths_built_then_no_zip_slip_and_unique() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let paths = entry_paths(&[
            v(&["..", "..", "etc", "passwd"]),
            v(&["/abs"]),
            v(&["C:", "win.ini"]),
            v(&["a\\b.txt"]),
            v(&["Docs", "Report.pdf"]),
            v(&["docs", "report.PDF"]),
            v(&[]),
        ]);
        for p in &paths {
            assert!(is_safe_entry_path(p), "{p:?}");
        }
        assert_eq!(paths[0], "_./_./etc/passwd");
        assert_eq!(paths[2], "C_/win.ini");
        assert_eq!(paths[4], "Docs/Report.pdf");
        assert_eq!(paths[5], "docs/report (2).PDF");
        assert_eq!(paths[6], "unnamed");
    }

    #[test]
    fn given_unsafe_paths_when_checked_then_refused() {
        for bad in [
            "", "/a", "a/../b", "./a", "a//b", "a\\b", "C:a", "c:/a", "a/\u{0}", "a/\nb", "..",
        ] {
            assert!(!is_safe_entry_path(bad), "{bad:?}");
        }
        for good in ["a", "a/b.pdf", "ä ö/ü.txt", "a..b", ".a"] {
            assert!(is_safe_entry_path(good), "{good:?}");
        }
    }

    fn manifest() -> PackageManifest {
        PackageManifest {
            format: PACKAGE_MANIFEST_FORMAT.into(),
            package: "Q4-pack".into(),
            route: "audit-packs".into(),
            root_node_id: 5000,
            created_at: t(),
            entries: vec![
                PackageEntry {
                    path: "a.pdf".into(),
                    node_id: 1,
                    name: "a.pdf".into(),
                    version: 2,
                    size: 10,
                    sha256: SHA.into(),
                },
                PackageEntry {
                    path: "sub/b.pdf".into(),
                    node_id: 2,
                    name: "b.pdf".into(),
                    version: 1,
                    size: 5,
                    sha256: SHA.into(),
                },
            ],
        }
    }

    #[test]
    fn given_package_manifest_when_serialised_and_read_back_then_identical() {
        let m = manifest();
        let json = m.to_json().unwrap();
        assert_eq!(PackageManifest::from_json(&json).unwrap(), m);
        assert_eq!(m.total_size(), 15);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["entries"][1]["sha256"], SHA);
        assert_eq!(v["created_at"], "2026-11-27T12:00:00Z");
    }

    #[test]
    fn given_bad_manifest_when_validated_then_entry_is_named() {
        let mut m = manifest();
        m.entries[1].path = "../b.pdf".into();
        assert!(matches!(
            m.validate(),
            Err(ManifestError::UnsafePath { index: 1, .. })
        ));
        let mut m = manifest();
        m.entries[1].path = "A.PDF".into();
        assert!(matches!(
            m.validate(),
            Err(ManifestError::Duplicate { index: 1, .. })
        ));
        let mut m = manifest();
        m.entries[0].sha256 = SHA.to_uppercase();
        assert!(matches!(
            m.to_json(),
            Err(ManifestError::BadDigest { index: 0, .. })
        ));
        let mut m = manifest();
        m.entries[0].path = "manifest.json".into();
        assert!(m.validate().is_err());
        let mut m = manifest();
        m.format = "other/1".into();
        assert!(matches!(m.validate(), Err(ManifestError::Format { .. })));
    }

    #[test]
    fn given_backup_records_when_written_as_lines_then_parsed_back_and_truncation_detected() {
        let r = BackupRecord {
            node_id: 7,
            ecm_path: vec!["Contracts".into(), "ACME/2026".into(), "MSA.pdf".into()],
            path: "Contracts/ACME_2026~9/MSA.pdf".into(),
            snapshot: Some("20261127T120000Z".into()),
            version: 4,
            size: 123,
            sha256: SHA.into(),
            modified: Some(t().to_rfc3339()),
            mime_type: None,
            metadata: [("categories".to_string(), serde_json::json!([]))].into(),
        };
        let mut text = r.to_line().unwrap();
        text.push('\n');
        text.push_str(&r.to_line().unwrap());
        assert_eq!(
            parse_backup_manifest(&text).unwrap(),
            vec![r.clone(), r.clone()]
        );
        let cut = &text[..text.len() - 10];
        assert!(matches!(
            parse_backup_manifest(cut),
            Err(ManifestError::Line { line: 3, .. })
        ));
        let mut bad = r.clone();
        bad.path = "/etc/passwd".into();
        assert!(bad.to_line().is_err());
        let mut bad = r;
        bad.snapshot = Some("../other".into());
        assert!(bad.to_line().is_err());
    }
}
