//! The CSV index parser (`domain::classify::parse_csv_index_rows`): one file
//! listing many documents with their metadata. Properties: a bad row is
//! refused on its own with its line (never the header's), a usable row
//! names a safe relative path, a file is never both used and refused, and
//! the strict reading fails exactly when some row was refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xecm_core::domain::classify::{parse_csv_index, parse_csv_index_rows};
use xecm_core::domain::manifest::is_safe_entry_path;
use xecm_core::domain::route::Index;

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
                assert!(
                    is_safe_entry_path(file),
                    "usable row names unsafe path {file:?}"
                );
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
