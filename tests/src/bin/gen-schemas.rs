//! `gen-schemas`: writes the JSON Schemas of the configurations and events
//! (`docs/schema/*.schema.json`) from the Rust types. Run it after changing
//! a configuration type: `cargo run -p xecm-stack --bin gen-schemas`; the
//! `schemas` test fails until the committed files equal what it writes.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    match xecm_stack::reference::write_all(&root) {
        Ok(written) => {
            for f in written {
                println!("wrote {f}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-schemas: {e:#}");
            ExitCode::FAILURE
        }
    }
}
