//! Transfer facts (what we know about one inbound file once it has been read)
//! and the idempotency key derived from them.
//!
//! The idempotency key is what makes a rerun after a crash harmless: it is
//! stored on the document and looked up before any upload. It covers route,
//! source path, size and SHA-256, so the same bytes dropped again under the
//! same name by the same route are recognised, while a corrected file (other
//! bytes) or the same file on another route is not.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Facts about one transfer; rendered into transfer-history attributes and the
/// `Transfer Ingested` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferFacts {
    pub route: String,
    pub host: String,
    /// Path relative to the route's source directory, as listed (lossy UTF-8).
    pub source_path: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    pub received_at: DateTime<Utc>,
    pub ingested_at: DateTime<Utc>,
    pub invocation_id: String,
}

impl TransferFacts {
    /// The value of a `{transfer.FIELD}` placeholder; `None` for an unknown field.
    /// Times are RFC 3339 UTC with seconds.
    pub fn field(&self, name: &str) -> Option<String> {
        Some(match name {
            "route" => self.route.clone(),
            "host" => self.host.clone(),
            "source_path" => self.source_path.clone(),
            "size" => self.size.to_string(),
            "sha256" => self.sha256.clone(),
            "received_at" => self.received_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "ingested_at" => self.ingested_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "invocation_id" => self.invocation_id.clone(),
            "idempotency_key" => self.idempotency_key(),
            _ => return None,
        })
    }

    /// See [`idempotency_key`].
    pub fn idempotency_key(&self) -> String {
        idempotency_key(&self.route, &self.source_path, self.size, &self.sha256)
    }
}

/// Stable idempotency key: `ik1-` + hex SHA-256 over the length-prefixed
/// fields. Length prefixes (not separators) keep `("a:b","c")` and
/// `("a","b:c")` apart; the version prefix lets the scheme change later without
/// colliding with stored keys. The SHA-256 hex is lowercased first so the key
/// does not depend on how the digest was printed.
pub fn idempotency_key(route: &str, source_path: &str, size: u64, sha256_hex: &str) -> String {
    let mut h = Sha256::new();
    for field in [route.as_bytes(), source_path.as_bytes()] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    h.update(size.to_be_bytes());
    let sha = sha256_hex.to_ascii_lowercase();
    h.update((sha.len() as u64).to_be_bytes());
    h.update(sha.as_bytes());
    format!("ik1-{}", hex::encode(h.finalize()))
}

/// The key a document carries while its bytes are still streaming (the
/// SHA-256 not yet known): `pending-<claim identity>-v<version>`, where the
/// claim identity hashes route, source path, size and the file's mtime (all
/// survive the claim rename and a takeover, so a rerun computes the same).
/// See `flows/ingest.rs`.
pub fn pending_key(route: &str, rel: &str, size: u64, mtime: i64, version: u32) -> String {
    let mut h = Sha256::new();
    for f in [route.as_bytes(), rel.as_bytes()] {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f);
    }
    h.update(size.to_be_bytes());
    h.update(mtime.to_be_bytes());
    format!("pending-{}-v{version}", &hex::encode(h.finalize())[..32])
}

/// The claim-identity part of a pending key (without the version).
pub fn pending_identity(key: &str) -> Option<(&str, u32)> {
    let rest = key.strip_prefix("pending-")?;
    let (id, v) = rest.rsplit_once("-v")?;
    Some((id, v.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn given_same_facts_when_keyed_twice_then_key_is_identical_and_case_insensitive_on_digest() {
        let a = idempotency_key("r", "in/a.pdf", 4, SHA);
        assert_eq!(a, idempotency_key("r", "in/a.pdf", 4, &SHA.to_uppercase()));
        assert!(a.starts_with("ik1-") && a.len() == 4 + 64);
    }

    #[test]
    fn given_any_field_changed_when_keyed_then_key_differs() {
        let base = idempotency_key("r", "a.pdf", 4, SHA);
        assert_ne!(base, idempotency_key("r2", "a.pdf", 4, SHA));
        assert_ne!(base, idempotency_key("r", "b.pdf", 4, SHA));
        assert_ne!(base, idempotency_key("r", "a.pdf", 5, SHA));
        assert_ne!(
            base,
            idempotency_key("r", "a.pdf", 4, &SHA.replace('9', "8"))
        );
        // Shifting a boundary between fields must not collide.
        assert_ne!(
            idempotency_key("ab", "c", 1, SHA),
            idempotency_key("a", "bc", 1, SHA)
        );
    }

    #[test]
    fn given_facts_when_fields_read_then_times_are_rfc3339_utc() {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).single().unwrap();
        let f = TransferFacts {
            route: "r".into(),
            host: "h".into(),
            source_path: "a.pdf".into(),
            size: 4,
            sha256: SHA.into(),
            received_at: t,
            ingested_at: t,
            invocation_id: "inv".into(),
        };
        assert_eq!(
            f.field("received_at").as_deref(),
            Some("2026-01-02T03:04:05Z")
        );
        assert_eq!(f.field("size").as_deref(), Some("4"));
        assert_eq!(f.field("idempotency_key"), Some(f.idempotency_key()));
        assert_eq!(f.field("nope"), None);
    }

    #[test]
    fn given_pending_key_when_parsed_then_identity_and_version_survive_and_differ_per_file() {
        let k = pending_key("r", "a.pdf", 10, 1000, 3);
        let (id, v) = pending_identity(&k).unwrap();
        assert_eq!(v, 3);
        assert_eq!(
            pending_identity(&pending_key("r", "a.pdf", 10, 1000, 1))
                .unwrap()
                .0,
            id
        );
        for other in [
            pending_key("r2", "a.pdf", 10, 1000, 3),
            pending_key("r", "b.pdf", 10, 1000, 3),
            pending_key("r", "a.pdf", 11, 1000, 3),
            pending_key("r", "a.pdf", 10, 1001, 3),
        ] {
            assert_ne!(pending_identity(&other).unwrap().0, id);
        }
        assert_eq!(pending_identity("ik1-abc"), None);
        assert_eq!(pending_identity("pending-x-vq"), None);
    }
}
