//! The configuration parsers (`domain::route`, `domain::export_route`,
//! `domain::backup`) on any JSON: an invocation payload or a routes file a
//! user wrote. Properties: an error names a field or the problem; an
//! accepted ingest route or export configuration, written back as JSON,
//! parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use xecm_core::domain::backup::parse_backup_event;
use xecm_core::domain::export_route::ExportConfig;
use xecm_core::domain::route::{IngestEvent, parse_ingest_event};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        match parse_ingest_event(value.clone()) {
            Ok(IngestEvent::Scheduled(r))
            | Ok(IngestEvent::Plan(r))
            | Ok(IngestEvent::Retry { route: r, .. }) => {
                let again = parse_ingest_event(json!({ "route": r.config }));
                assert!(
                    again.is_ok(),
                    "accepted route does not parse back: {again:?}"
                );
            }
            Err(e) => assert!(!e.to_string().trim().is_empty()),
        }
        if let Err(e) = parse_backup_event(value) {
            assert!(!e.to_string().trim().is_empty());
        }
    }
    if let Err(e) = ExportConfig::from_json(text) {
        assert!(!e.to_string().trim().is_empty());
    } else if let Ok(cfg) = serde_json::from_str::<ExportConfig>(text) {
        let written = serde_json::to_string(&cfg).expect("routes serialise");
        let again = ExportConfig::from_json(&written);
        assert!(
            again.is_ok(),
            "accepted export routes do not parse back: {again:?}"
        );
    }
});
