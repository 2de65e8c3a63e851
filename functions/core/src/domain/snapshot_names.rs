//! Names inside a backup snapshot: snapshot ids and the SFTP-safe segment
//! each Content Server node gets.
//!
//! Snapshot ids are `YYYYMMDDTHHMMSSZ` (UTC), so lexical order is time order
//! and retention needs no parsing of dates from listings.
//!
//! Node names may hold anything Content Server allows (`/`, `\`, control
//! characters, trailing dots, 248 characters of multi-byte text). A name that
//! is already a harmless SFTP segment is kept verbatim; any other name gets
//! [`sftp_safe_name`]'s rendering plus the node id (`Report~4711.pdf`). The
//! rule is deterministic (the same node always gets the same segment) and two
//! nodes can never meet on one segment: a verbatim name never contains `~`
//! followed by a digit, and every suffixed name does, ending in its node's
//! own id. The original name is kept in the manifest (`ecm_path`).
//!
//! Two verbatim names that differ only in case are distinct on a POSIX
//! server; for servers that fold case the flow renames the later one of a
//! page with [`unique_segment`] and writes every document with a no-replace
//! rename, so one never overwrites the other.

use chrono::{DateTime, Utc};

use super::names::{SFTP_NAME_MAX_BYTES, sftp_safe_name};
use super::template::split_ext;

/// Files of the snapshot itself at its top level; a root folder of this name
/// is given a suffixed segment.
pub const RESERVED_TOP_LEVEL: [&str; 2] = ["manifest.jsonl", "snapshot.json"];

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

/// Whether `name` reads like one of our suffixed names (`~` then a digit).
fn has_marker(name: &str) -> bool {
    let b = name.as_bytes();
    b.windows(2).any(|w| w[0] == b'~' && w[1].is_ascii_digit())
}

/// Whether `name` can be used verbatim as a snapshot segment.
pub fn is_verbatim_safe(name: &str) -> bool {
    !name.is_empty()
        && sftp_safe_name(name) == name
        // Windows servers drop trailing dots and spaces: not verbatim either.
        && !name.ends_with('.')
        && !name.ends_with(' ')
        && !has_marker(name)
}

/// The segment of a node named `name` (see the module docs).
pub fn safe_segment(name: &str, node_id: i64) -> String {
    if is_verbatim_safe(name) {
        name.to_owned()
    } else {
        unique_segment(name, node_id)
    }
}

/// The segment of a root folder: like [`safe_segment`], but never one of the
/// snapshot's own top-level files.
pub fn root_segment(name: &str, node_id: i64) -> String {
    let s = safe_segment(name, node_id);
    if RESERVED_TOP_LEVEL
        .iter()
        .any(|r| r.eq_ignore_ascii_case(&s))
    {
        unique_segment(name, node_id)
    } else {
        s
    }
}

/// The always-suffixed segment `stem~{id}.ext`, within the SFTP name budget.
pub fn unique_segment(name: &str, node_id: i64) -> String {
    suffixed(name, &format!("~{node_id}"))
}

/// `stem{marker}.ext` within the SFTP name budget.
fn suffixed(name: &str, marker: &str) -> String {
    let safe = sftp_safe_name(name.trim_end_matches(['.', ' ']));
    let (stem, ext) = split_ext(&safe);
    // Keep a short plain extension after the id so the file still opens.
    let ext =
        if !ext.is_empty() && ext.len() <= 16 && ext.bytes().all(|b| b.is_ascii_alphanumeric()) {
            format!(".{ext}")
        } else {
            String::new()
        };
    let stem_src = if ext.is_empty() { safe.as_str() } else { stem };
    let room = SFTP_NAME_MAX_BYTES.saturating_sub(marker.len() + ext.len());
    let mut head = String::new();
    for c in stem_src.chars() {
        if head.len() + c.len_utf8() > room {
            break;
        }
        head.push(c);
    }
    let head = head.trim_end_matches(['.', ' ']);
    let head = if head.is_empty() { "unnamed" } else { head };
    format!("{head}{marker}{ext}")
}

/// The segment of an older version of a document (`versions: "all"`):
/// `stem~{id}v{version}.ext`. It can meet neither a verbatim name (no `~`
/// and digit there) nor any [`unique_segment`] (those end in `~{id}`, these
/// in `v{version}`), nor another version or node.
pub fn version_segment(name: &str, node_id: i64, version: u32) -> String {
    suffixed(name, &format!("~{node_id}v{version}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::manifest::is_safe_entry_path;

    #[test]
    fn given_versions_of_documents_when_named_then_distinct_from_every_other_segment() {
        assert_eq!(version_segment("Report.pdf", 42, 3), "Report~42v3.pdf");
        assert_eq!(version_segment("a/b", 7, 1), "a_b~7v1");
        let long = "Ü".repeat(240);
        let s = version_segment(&long, 123456, 17);
        assert!(
            s.len() <= SFTP_NAME_MAX_BYTES && s.ends_with("~123456v17"),
            "{s}"
        );
        let all = [
            version_segment("x.pdf", 1, 2),
            version_segment("x.pdf", 1, 3),
            version_segment("x.pdf", 12, 1),
            unique_segment("x.pdf", 1),
            unique_segment("x~1v2.pdf", 9),
            safe_segment("x.pdf", 1),
        ];
        let set: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len(), "{all:?}");
    }

    #[test]
    fn given_plain_names_when_made_safe_then_kept_verbatim() {
        for n in [
            "Report.pdf",
            "Q3 Prices.xlsx",
            "ä ö ü.txt",
            "a..b",
            "v1.2.3",
        ] {
            assert_eq!(safe_segment(n, 7), n);
        }
    }

    #[test]
    fn given_hostile_names_when_made_safe_then_suffixed_by_id_and_single_segment() {
        let cases = [
            ("a/b.pdf", "a_b~11.pdf"),
            ("..", "unnamed~12"),
            ("trailing. ", "trailing~13"),
            ("nul\0x", "nul_x~14"),
            ("line\nbreak.txt", "line_break~15.txt"),
            ("x~1.pdf", "x~1~16.pdf"),
            (".hidden", "_hidden~17"),
        ];
        for (name, want) in cases {
            let id: i64 = want
                .rsplit('~')
                .next()
                .and_then(|s| s.split('.').next())
                .and_then(|s| s.parse().ok())
                .unwrap();
            let got = safe_segment(name, id);
            assert_eq!(got, want, "{name:?}");
            assert!(is_safe_entry_path(&got), "{got:?}");
        }
    }

    #[test]
    fn given_names_that_sanitise_alike_when_made_safe_then_never_equal() {
        // "a_b.pdf" is verbatim; "a/b.pdf" and "a\\b.pdf" render the same but
        // carry their own ids; "a_b~2.pdf" cannot be verbatim.
        let names = [
            ("a_b.pdf", 1),
            ("a/b.pdf", 2),
            ("a\\b.pdf", 3),
            ("a_b~2.pdf", 4),
        ];
        let segs: Vec<String> = names.iter().map(|(n, id)| safe_segment(n, *id)).collect();
        let mut sorted = segs.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), segs.len(), "{segs:?}");
    }

    #[test]
    fn given_long_name_when_made_safe_then_within_budget_with_id_and_extension() {
        let long = format!("{}/x.pdf", "é".repeat(300));
        let s = safe_segment(&long, 123456789);
        assert!(s.len() <= SFTP_NAME_MAX_BYTES, "{}", s.len());
        assert!(s.ends_with("~123456789.pdf"), "{s}");
        // Same input, same segment.
        assert_eq!(s, safe_segment(&long, 123456789));
    }

    #[test]
    fn given_root_named_like_a_snapshot_file_when_made_safe_then_suffixed() {
        assert_eq!(root_segment("manifest.jsonl", 5), "manifest~5.jsonl");
        assert_eq!(root_segment("Suppliers", 5), "Suppliers");
    }
}
