//! The generated reference: the JSON Schemas in `docs/schema/`, from
//! `xecm_core::schema`. Shared by the `gen-schemas` binary (which writes
//! them) and the `schemas` test (which fails when the committed files
//! differ).

use std::path::Path;

use anyhow::{Context, Result};

/// The command that rewrites every generated file.
pub const REGENERATE: &str = "cargo run -p xecm-stack --bin gen-schemas";

/// Where the schemas live, relative to the repository root.
pub const SCHEMA_DIR: &str = "docs/schema";

/// (path relative to the repository root, generated content) of every file.
pub fn generated() -> Vec<(String, String)> {
    xecm_core::schema::all()
        .into_iter()
        .map(|s| {
            (
                format!("{SCHEMA_DIR}/{}", s.file),
                xecm_core::schema::to_text(&s.schema),
            )
        })
        .collect()
}

/// Write every generated file under `root`; returns their paths.
pub fn write_all(root: &Path) -> Result<Vec<String>> {
    let mut written = Vec::new();
    for (rel, text) in generated() {
        let path = root.join(&rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(rel);
    }
    Ok(written)
}
