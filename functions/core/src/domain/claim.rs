//! Claims, attempts, quarantine and the SFTP-side paths of a file's life
//! (`.inflight/`, `failed/`, archive), as pure decisions.
//!
//! A claim is one atomic SFTP rename of `source_dir/<rel>` to
//! `source_dir/.inflight/<tag>/<rel>`, where `<tag>` is
//! `<claimed_at>-a<attempt>-<route8>-<nonce>`:
//! - `claimed_at` (Unix seconds) tells later runs when the lease expires;
//! - `attempt` counts tries across invocations, so a file that keeps failing
//!   transiently is quarantined after `max_attempts`;
//! - `route8` (8 hex digits of SHA-256 of the route name) keeps two routes that
//!   share a source directory from taking over each other's claims;
//! - `nonce` (from the invocation id) keeps two claims of the same second apart.
//!
//! Why a directory per claim rather than a longer file name: the file keeps
//! its exact name (a 255-byte name stays claimable, no escaping of `/` for
//! recursive routes), and a takeover is again one rename from one tag
//! directory to a new one, which only one invocation can win. The flow
//! creates the tag directory (and the rel path's parents) first; an empty
//! leftover directory is harmless and removed on cleanup.
//!
//! `failed/` is flat: a recursive route's `a/b.pdf` fails as `a__b.pdf`, and a
//! manual retry moves it back to the top of `source_dir` under that name.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::names::{error_report_name, sftp_safe_name};
use super::route::{FAILED_DIR, INFLIGHT_DIR, PostAction, Route};
use super::template::{TemplateContext, TemplateError};

/// The identity of one claim; see the module docs for the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimTag {
    pub claimed_at: i64,
    pub attempt: u32,
    pub route_tag: String,
    pub nonce: String,
}

/// 8 hex digits identifying a route in claim names.
pub fn route_tag(route_name: &str) -> String {
    hex::encode(&Sha256::digest(route_name.as_bytes())[..4])
}

impl ClaimTag {
    /// A tag for attempt `attempt` (1 for a first claim) at `now`.
    pub fn new(route_name: &str, attempt: u32, now: i64, invocation_id: &str) -> Self {
        let mut nonce: String = invocation_id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect::<String>()
            .to_ascii_lowercase();
        if nonce.is_empty() {
            nonce.push('x');
        }
        ClaimTag {
            claimed_at: now,
            attempt: attempt.max(1),
            route_tag: route_tag(route_name),
            nonce,
        }
    }

    pub fn dir_name(&self) -> String {
        format!(
            "{}-a{}-{}-{}",
            self.claimed_at, self.attempt, self.route_tag, self.nonce
        )
    }

    /// Parse a tag directory name; `None` for anything we did not write.
    pub fn parse(dir_name: &str) -> Option<Self> {
        let mut parts = dir_name.splitn(4, '-');
        let claimed_at = parts.next()?.parse::<i64>().ok().filter(|t| *t >= 0)?;
        let attempt = parts
            .next()?
            .strip_prefix('a')?
            .parse::<u32>()
            .ok()
            .filter(|a| *a >= 1)?;
        let route_tag = parts.next()?;
        let nonce = parts.next()?;
        let hex8 = route_tag.len() == 8 && route_tag.bytes().all(|b| b.is_ascii_hexdigit());
        let nonce_ok = !nonce.is_empty()
            && nonce.len() <= 12
            && nonce.bytes().all(|b| b.is_ascii_alphanumeric());
        (hex8 && nonce_ok).then(|| ClaimTag {
            claimed_at,
            attempt,
            route_tag: route_tag.to_owned(),
            nonce: nonce.to_owned(),
        })
    }

    /// Path of the claimed file relative to `source_dir`.
    pub fn claimed_path(&self, rel_path: &str) -> String {
        format!("{INFLIGHT_DIR}/{}/{rel_path}", self.dir_name())
    }
}

/// Split a path under `.inflight/` (relative to `source_dir`, with or without
/// the `.inflight/` prefix) into its tag and the original relative path.
pub fn parse_claimed_path(path: &str) -> Option<(ClaimTag, String)> {
    let path = path
        .strip_prefix(INFLIGHT_DIR)
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or(path);
    let (dir, rel) = path.split_once('/')?;
    if rel.is_empty()
        || rel
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return None;
    }
    Some((ClaimTag::parse(dir)?, rel.to_owned()))
}

/// What to do with a claim found in `.inflight/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExistingClaim {
    /// Another route's claim in a shared directory: not ours to touch.
    ForeignRoute,
    /// Someone holds it; the lease ends in this many seconds.
    Held { expires_in: u64 },
    /// The lease has expired: re-claim under this tag (attempt + 1).
    TakeOver(ClaimTag),
    /// Attempts are used up: move to `failed/` as quarantined.
    Quarantine { attempts: u32 },
}

/// Decide about a claim found in `.inflight/`. The attempt that just expired
/// counts: with `max_attempts = 3`, a third expired claim is quarantined
/// instead of taken over a third time.
pub fn decide_existing(
    tag: &ClaimTag,
    route_name: &str,
    now: i64,
    lease_secs: u64,
    max_attempts: u32,
    invocation_id: &str,
) -> ExistingClaim {
    if tag.route_tag != route_tag(route_name) {
        return ExistingClaim::ForeignRoute;
    }
    let age = now.saturating_sub(tag.claimed_at).max(0) as u64;
    if age <= lease_secs {
        return ExistingClaim::Held {
            expires_in: lease_secs - age,
        };
    }
    if tag.attempt >= max_attempts {
        return ExistingClaim::Quarantine {
            attempts: tag.attempt,
        };
    }
    ExistingClaim::TakeOver(ClaimTag::new(
        route_name,
        tag.attempt + 1,
        now,
        invocation_id,
    ))
}

/// After a transient failure within an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterTransient {
    /// Leave the claim; a later run takes it over when the lease expires.
    LeaveClaimed,
    /// That was the last allowed attempt.
    Quarantine,
}

pub fn after_transient_failure(attempt: u32, max_attempts: u32) -> AfterTransient {
    if attempt >= max_attempts {
        AfterTransient::Quarantine
    } else {
        AfterTransient::LeaveClaimed
    }
}

/// Why a file went to `failed/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// No rule, bad type, bad sidecar, ECM refusal: retrying the same file is pointless.
    Permanent,
    /// Transient failures exhausted the attempts.
    Quarantined,
}

/// The `<name>.error.json` written next to a failed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureReport {
    pub route: String,
    /// Source path relative to `source_dir`, non-UTF-8 bytes `%XX`-escaped.
    pub source_path: String,
    /// Name of the file in `failed/`.
    pub failed_name: String,
    pub kind: FailureKind,
    pub reason: String,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub failed_at: String,
    pub invocation_id: String,
    /// How to retry: the manual event that moves it back.
    pub retry_with: serde_json::Value,
}

impl FailureReport {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        route: &str,
        source_path: &str,
        failed_name: &str,
        kind: FailureKind,
        reason: &str,
        attempts: u32,
        now: DateTime<Utc>,
        invocation_id: &str,
    ) -> Self {
        FailureReport {
            route: route.to_owned(),
            source_path: source_path.to_owned(),
            failed_name: failed_name.to_owned(),
            kind,
            reason: reason.to_owned(),
            attempts,
            size: None,
            sha256: None,
            failed_at: now.to_rfc3339_opts(SecondsFormat::Secs, true),
            invocation_id: invocation_id.to_owned(),
            retry_with: serde_json::json!({"action": "retry", "files": [failed_name]}),
        }
    }
}

/// Paths (relative to `source_dir`) for a failed file: the file and its report.
/// `n` > 1 picks the n-th alternative when the first is taken. The name is
/// flattened (subdirectories of a recursive route become part of it).
pub fn failed_paths(rel_path: &str, n: u32) -> (String, String) {
    let flat = rel_path.replace('/', "__");
    let safe = sftp_safe_name(&flat);
    let name = if n > 1 {
        super::names::numbered(&safe, n, super::names::SFTP_NAME_MAX_BYTES)
    } else {
        safe
    };
    let report = error_report_name(&name);
    (
        format!("{FAILED_DIR}/{name}"),
        format!("{FAILED_DIR}/{report}"),
    )
}

/// For a manual retry of `failed/<name>`: (file, report, target in `source_dir`).
pub fn retry_paths(failed_name: &str) -> (String, String, String) {
    (
        format!("{FAILED_DIR}/{failed_name}"),
        format!("{FAILED_DIR}/{}", error_report_name(failed_name)),
        failed_name.to_owned(),
    )
}

/// Where a successfully ingested file goes, relative to `source_dir`:
/// `Some(path)` for archive (the rendered dir plus the original relative path,
/// whose segments the listing already proved normalised), `None` for delete.
pub fn archive_path(
    route: &Route,
    rel_path: &str,
    now: DateTime<Utc>,
) -> Result<Option<String>, TemplateError> {
    match &route.post_action {
        PostAction::Delete => Ok(None),
        PostAction::Archive { dir } => {
            let ctx = TemplateContext {
                date: Some(now),
                route: Some(route.name().to_owned()),
                ..TemplateContext::default()
            };
            let mut segments = dir.render_path(&ctx)?;
            segments.push(rel_path.to_owned());
            Ok(Some(segments.join("/")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::route::{RouteConfig, tests::sample};
    use chrono::TimeZone;

    #[test]
    fn given_tag_when_formatted_and_parsed_then_round_trips() {
        let t = ClaimTag::new("acme-invoices", 2, 1_767_225_600, "5b2c-41d9-Aa_bc-9999");
        assert_eq!(t.nonce, "5b2c41d9aabc");
        let dir = t.dir_name();
        assert_eq!(ClaimTag::parse(&dir), Some(t.clone()));
        let p = t.claimed_path("sub/INV 1.pdf");
        assert_eq!(p, format!(".inflight/{dir}/sub/INV 1.pdf"));
        assert_eq!(
            parse_claimed_path(&p),
            Some((t, "sub/INV 1.pdf".to_owned()))
        );
    }

    #[test]
    fn given_foreign_or_malformed_names_when_parsed_then_rejected() {
        for bad in [
            "",
            "x",
            "1-a1-zzzzzzzz-n",
            "1-a0-0123abcd-n",
            "-1-a1-0123abcd-n",
            "1-a1-0123abcd-",
            "1-b1-0123abcd-n",
            "1-a1-0123abcd-n-x",
        ] {
            assert_eq!(ClaimTag::parse(bad), None, "{bad:?}");
        }
        assert!(parse_claimed_path(".inflight/1-a1-0123abcd-n/../x").is_none());
        assert!(parse_claimed_path(".inflight/1-a1-0123abcd-n/").is_none());
        assert!(parse_claimed_path("1-a1-0123abcd-n/x.pdf").is_some());
    }

    #[test]
    fn given_claim_within_lease_when_found_then_held_and_not_taken_over() {
        let t = ClaimTag::new("r", 1, 1000, "inv");
        assert_eq!(
            decide_existing(&t, "r", 1000 + 1800, 1800, 5, "inv2"),
            ExistingClaim::Held { expires_in: 0 }
        );
        assert_eq!(
            decide_existing(&t, "r", 1100, 1800, 5, "inv2"),
            ExistingClaim::Held { expires_in: 1700 }
        );
        // A clock that went backwards does not make a claim stale.
        assert_eq!(
            decide_existing(&t, "r", 10, 1800, 5, "inv2"),
            ExistingClaim::Held { expires_in: 1800 }
        );
    }

    #[test]
    fn given_stale_claim_when_found_then_taken_over_with_next_attempt_until_quarantine() {
        let t = ClaimTag::new("r", 1, 1000, "inv");
        let ExistingClaim::TakeOver(next) = decide_existing(&t, "r", 2801, 1800, 3, "inv2") else {
            panic!("expected takeover");
        };
        assert_eq!(
            (next.attempt, next.claimed_at, next.nonce.as_str()),
            (2, 2801, "inv2")
        );
        let third = ClaimTag::new("r", 3, 1000, "inv");
        assert_eq!(
            decide_existing(&third, "r", 2801, 1800, 3, "x"),
            ExistingClaim::Quarantine { attempts: 3 }
        );
        assert_eq!(
            decide_existing(&t, "other-route", 99_999, 1800, 3, "x"),
            ExistingClaim::ForeignRoute
        );
        assert_eq!(after_transient_failure(2, 3), AfterTransient::LeaveClaimed);
        assert_eq!(after_transient_failure(3, 3), AfterTransient::Quarantine);
    }

    #[test]
    fn given_hostile_rel_path_when_failed_then_single_safe_name_with_report() {
        let (f, r) = failed_paths("sub/.x:y.pdf", 1);
        assert_eq!(f, "failed/sub__.x_y.pdf");
        assert_eq!(r, "failed/sub__.x_y.pdf.error.json");
        let (f, _) = failed_paths(".evil", 2);
        assert_eq!(f, "failed/_evil (2)");
        let long = "é".repeat(127);
        let (f, r) = failed_paths(&long, 1);
        assert!(f.len() - "failed/".len() <= 230 && r.len() - "failed/".len() <= 255);
        assert_eq!(
            retry_paths("a.pdf"),
            (
                "failed/a.pdf".into(),
                "failed/a.pdf.error.json".into(),
                "a.pdf".into()
            )
        );
    }

    #[test]
    fn given_archive_post_action_when_done_then_dated_path_keeps_subdirs() {
        let r = serde_json::from_value::<RouteConfig>(sample())
            .unwrap()
            .validate()
            .unwrap();
        let now = Utc
            .with_ymd_and_hms(2026, 11, 27, 1, 2, 3)
            .single()
            .unwrap();
        assert_eq!(
            archive_path(&r, "a/b.pdf", now).unwrap().as_deref(),
            Some("archive/2026-11-27/a/b.pdf")
        );
        let mut v = sample();
        v["post_action"] = serde_json::json!({"action": "delete"});
        let r = serde_json::from_value::<RouteConfig>(v)
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(archive_path(&r, "a/b.pdf", now).unwrap(), None);
    }

    #[test]
    fn given_failure_when_reported_then_json_has_reason_and_retry_event() {
        let now = Utc
            .with_ymd_and_hms(2026, 11, 27, 1, 2, 3)
            .single()
            .unwrap();
        let mut rep = FailureReport::new(
            "r",
            "in/a.pdf",
            "in__a.pdf",
            FailureKind::Quarantined,
            "ECM 503 x5",
            5,
            now,
            "inv",
        );
        rep.size = Some(3);
        let v = serde_json::to_value(&rep).unwrap();
        assert_eq!(v["kind"], "quarantined");
        assert_eq!(v["failed_at"], "2026-11-27T01:02:03Z");
        assert_eq!(v["retry_with"]["files"][0], "in__a.pdf");
        assert!(v.get("sha256").is_none());
    }
}
