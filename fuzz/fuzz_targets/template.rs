//! The template expander (`domain::template`): route authors write
//! templates, partners supply the values (file names, captures, CSV and
//! sidecar metadata). Input: the template, then 0xFF, then a value used for
//! the file name, every capture and every metadata key. Properties: parsing
//! and rendering never panic; a rendered segment or path is never empty,
//! `.`/`..`, and holds no separator or NUL, whatever the values hold.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::fuzz_target;
use xecm_core::domain::template::{Scope, Template, TemplateContext};

fn check_segment(s: &str, backslash: bool, what: &str) {
    assert!(!s.is_empty(), "{what}: empty segment");
    assert!(s != "." && s != "..", "{what}: dot segment");
    assert!(!s.contains('/') && !s.contains('\0'), "{what}: {s:?}");
    if backslash {
        assert!(!s.contains('\\'), "{what}: {s:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let (source, value) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"INV-1 a.pdf"[..]),
    };
    let source = String::from_utf8_lossy(source);
    let value = String::from_utf8_lossy(value).into_owned();
    let captures: BTreeSet<String> = ["po", "vendor"].map(str::to_owned).into();
    let ctx = TemplateContext {
        name: Some(value.clone()),
        date: chrono::DateTime::from_timestamp(1_800_000_000, 0),
        version: Some(3),
        node_id: Some(4711),
        route: Some("fuzz".into()),
        captures: captures
            .iter()
            .map(|c| (c.clone(), value.clone()))
            .collect(),
        meta: BTreeMap::from([("plant".to_owned(), value.clone())]),
        categories: BTreeMap::from([("9001_2".to_owned(), value.clone())]),
        transfer: None,
    };
    for scope in [
        Scope::ingest_name(captures.clone()),
        Scope::export_name(),
        Scope::dates_only(),
    ] {
        let Ok(t) = Template::parse(&source, &scope) else {
            continue;
        };
        let _ = t.render_value(&ctx);
        if let Ok(s) = t.render_segment(&ctx) {
            check_segment(&s, true, "render_segment");
        }
        if let Ok(s) = t.render_name(&ctx) {
            check_segment(&s, false, "render_name");
        }
        if let Ok(p) = t.render_path(&ctx) {
            p.iter().for_each(|s| check_segment(s, true, "render_path"));
        }
        if let Ok(p) = t.render_name_path(&ctx) {
            p.iter()
                .for_each(|s| check_segment(s, false, "render_name_path"));
        }
    }
});
