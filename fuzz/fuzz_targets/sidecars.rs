//! Sidecar metadata parsers (`domain::classify`): `<name>.json` and
//! `<name>.xml` files a partner drops beside a document. Properties: no
//! panic, and an error names the file and says what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xecm_core::domain::classify::{parse_json_sidecar, parse_xml_sidecar};

fuzz_target!(|data: &[u8]| {
    for (file, parsed) in [
        ("a.pdf.json", parse_json_sidecar("a.pdf.json", data)),
        ("a.pdf.xml", parse_xml_sidecar("a.pdf.xml", data)),
    ] {
        match parsed {
            Ok(meta) => {
                for (k, v) in meta.iter() {
                    assert!(!k.is_empty(), "empty key from {file}");
                    assert!(!v.contains('\0'), "NUL in the value of {k} from {file}");
                }
            }
            Err(e) => {
                assert_eq!(e.file, file);
                assert!(!e.problem.trim().is_empty());
            }
        }
    }
});
