//! The export package manifest (`domain::manifest`): reading a manifest we
//! did not write, and building entry paths from Content Server names.
//! Properties: what is read validates, writes and reads back equal; every
//! entry path built from any names is safe, unique (case-insensitively)
//! and never the manifest's own name.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use xecm_core::domain::manifest::{
    PACKAGE_MANIFEST_NAME, PackageManifest, entry_paths, is_safe_entry_path,
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(m) = PackageManifest::from_json(&text) {
        for e in &m.entries {
            assert!(
                is_safe_entry_path(&e.path),
                "read an unsafe path {:?}",
                e.path
            );
        }
        let written = m
            .to_json()
            .expect("a manifest that was read can be written");
        assert_eq!(PackageManifest::from_json(&written).as_ref(), Ok(&m));
    }
    // Name paths: documents separated by newlines, folders by 0x1F.
    let name_paths: Vec<Vec<String>> = text
        .split('\n')
        .map(|doc| doc.split('\u{1f}').map(str::to_owned).collect())
        .collect();
    let paths = entry_paths(&name_paths);
    assert_eq!(paths.len(), name_paths.len());
    let mut seen = BTreeSet::new();
    for p in &paths {
        assert!(
            is_safe_entry_path(p),
            "unsafe entry path {p:?} from {name_paths:?}"
        );
        assert_ne!(p.to_lowercase(), PACKAGE_MANIFEST_NAME);
        assert!(seen.insert(p.to_lowercase()), "entry path {p:?} twice");
    }
});
