//! The backup snapshot manifest (`domain::manifest`, JSON lines): a manifest
//! read from SFTP may be truncated by a crash or edited by hand. Properties:
//! every record read is valid, writes as one line and reads back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xecm_core::domain::manifest::{is_safe_entry_path, parse_backup_manifest};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(records) = parse_backup_manifest(&text) {
        let mut again = String::new();
        for r in &records {
            assert!(
                is_safe_entry_path(&r.path),
                "read an unsafe path {:?}",
                r.path
            );
            assert!(r.node_id > 0);
            let line = r.to_line().expect("a record that was read can be written");
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            again.push_str(&line);
        }
        assert_eq!(parse_backup_manifest(&again).as_ref(), Ok(&records));
    }
});
