//! The `$schema` key a configuration file may carry so that an editor finds
//! its JSON Schema (`docs/schema/`). The functions accept it where a
//! configuration starts (a route, the export routes, a backup plan, an
//! event) and ignore its value; it is never written back (a continuation
//! event or a report does not carry it).

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer};

/// The key itself.
pub const SCHEMA_KEY: &str = "$schema";

/// A `$schema` reference: read (it must be a string), then forgotten. All
/// values are equal, so two configurations that differ only in it compare
/// equal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchemaRef;

impl<'de> Deserialize<'de> for SchemaRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|_| SchemaRef)
    }
}

impl JsonSchema for SchemaRef {
    fn schema_name() -> Cow<'static, str> {
        "SchemaRef".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "The JSON Schema this file follows, for editors (e.g. \"../docs/schema/ingest-event.schema.json\"); the function ignores it.",
            "type": "string"
        })
    }
}

/// Removes a top-level `$schema` key (a string) from a JSON object, for
/// parsers of shapes that cannot carry the field themselves (tagged enums).
/// A `$schema` that is not a string is left for the parser to refuse.
pub fn strip(value: &mut serde_json::Value) {
    if let serde_json::Value::Object(m) = value
        && m.get(SCHEMA_KEY).is_some_and(serde_json::Value::is_string)
    {
        m.remove(SCHEMA_KEY);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::domain::backup::{BackupEvent, parse_backup_event};
    use crate::domain::export_route::{ExportConfig, ExportManualEvent, tests::sample_config};
    use crate::domain::route::{IngestEvent, parse_ingest_event, tests::sample};

    #[test]
    fn schema_key_is_accepted_where_a_configuration_or_event_starts_and_nowhere_else() {
        let mut route = sample();
        route["$schema"] = json!("../../docs/schema/ingest-route.schema.json");
        let ev = json!({"$schema": "../docs/schema/ingest-event.schema.json", "route": route});
        assert!(matches!(
            parse_ingest_event(ev.clone()),
            Ok(IngestEvent::Scheduled(_))
        ));
        // Not a string: refused, naming the key.
        let mut bad = ev.clone();
        bad["route"]["$schema"] = json!(5);
        let e = parse_ingest_event(bad).unwrap_err();
        assert!(e.to_string().contains("$schema"), "{e}");
        // Other unknown fields are still refused, and `$schema` deeper down too.
        let mut bad = ev;
        bad["route"]["readiness"]["$schema"] = json!("x");
        let e = parse_ingest_event(bad).unwrap_err();
        assert!(e.field.starts_with("route.readiness"), "{e}");

        let mut cfg = sample_config();
        cfg["$schema"] = json!("../docs/schema/export-routes.schema.json");
        assert!(ExportConfig::from_json(&cfg.to_string()).is_ok());
        let ev =
            json!({"$schema": "x", "action": "resend", "node_id": 4711, "route": "price-lists"});
        assert!(ExportManualEvent::from_json(ev).is_ok());

        let plan = json!({"name": "critical", "roots": [2000], "sftp_secret": "s",
            "directory": "backups/critical", "retention": 2, "$schema": "y"});
        let ev = json!({"$schema": "x", "backup": plan});
        assert!(matches!(
            parse_backup_event(ev),
            Ok(BackupEvent::Scheduled(_))
        ));
    }
}
