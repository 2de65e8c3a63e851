//! The CSV index parser (`domain::classify::parse_csv_index_rows`): one file
//! listing many documents with their metadata. Properties: a bad row is
//! refused on its own with its line (never the header's), a usable row
//! names a plain relative path (no traversal, no line break: an unclosed
//! quote is refused, not merged), a file is never both used and refused, and
//! the strict reading fails exactly when some row was refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xecm_core::domain::classify::{parse_csv_index, parse_csv_index_rows};
use xecm_core::domain::route::Index;

/// What a usable row may name: a relative path below the index's
/// directory, without traversal, backslashes or control characters.
fn plain_relative(path: &str) -> bool {
    !path.starts_with('/')
        && !path.contains('\\')
        && !path.chars().any(char::is_control)
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && s.len() <= 255)
}

fuzz_target!(|data: &[u8]| {
    let (delimiter, body) = match data.split_first() {
        Some((b';', rest)) => (b';', rest),
        Some((b'\t', rest)) => (b'\t', rest),
        _ => (b',', data),
    };
    let index = Index {
        pattern: globset::Glob::new("index*.csv")
            .expect("glob")
            .compile_matcher(),
        file_column: "file".into(),
        delimiter,
    };
    match parse_csv_index_rows("index-1.csv", body, &index) {
        Ok(parsed) => {
            for r in &parsed.refused {
                assert!(r.line >= 2, "a row refused on line {}", r.line);
                assert!(!r.reason.trim().is_empty());
                if let Some(f) = &r.file {
                    assert!(!parsed.rows.contains_key(f), "{f:?} both used and refused");
                }
            }
            for file in parsed.rows.keys() {
                assert!(plain_relative(file), "usable row names {file:?}");
            }
            let strict = parse_csv_index("index-1.csv", body, &index);
            assert_eq!(strict.is_err(), !parsed.refused.is_empty());
        }
        Err(e) => {
            assert_eq!(e.file, "index-1.csv");
            assert!(!e.problem.trim().is_empty());
            assert!(parse_csv_index("index-1.csv", body, &index).is_err());
        }
    }
});
