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

    /// The tag that takes over the expired claim `old` at `now`: the next
    /// attempt, and a nonce derived from this invocation *and* the old tag,
    /// so one run taking over several claims in one second names each
    /// takeover differently (and two runs racing for one claim still collide,
    /// which is what makes only one of them win).
    pub fn takeover_of(old: &ClaimTag, route_name: &str, now: i64, invocation_id: &str) -> Self {
        let mut h = Sha256::new();
        for f in [invocation_id.as_bytes(), old.dir_name().as_bytes()] {
            h.update((f.len() as u64).to_be_bytes());
            h.update(f);
        }
        ClaimTag {
            claimed_at: now,
            attempt: old.attempt + 1,
            route_tag: route_tag(route_name),
            nonce: hex::encode(h.finalize())[..12].to_owned(),
        }
    }

    /// The tag a run gives its own claim when it stops on a run-level outage
    /// (the ECM or the SFTP server unavailable): already expired, so the next
    /// run takes it over at once, and one attempt lower, so that takeover
    /// does not count an attempt the outage spent (attempt 0 = released
    /// before its first real try).
    pub fn released(&self, lease_secs: u64) -> Self {
        ClaimTag {
            claimed_at: self
                .claimed_at
                .saturating_sub(lease_secs as i64)
                .saturating_sub(1)
                .max(0),
            attempt: self.attempt.saturating_sub(1),
            route_tag: self.route_tag.clone(),
            nonce: self.nonce.clone(),
        }
    }

    /// Parse a tag directory name; `None` for anything we did not write.
    pub fn parse(dir_name: &str) -> Option<Self> {
        let mut parts = dir_name.splitn(4, '-');
        let claimed_at = parts.next()?.parse::<i64>().ok().filter(|t| *t >= 0)?;
        let attempt = parts.next()?.strip_prefix('a')?.parse::<u32>().ok()?;
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
    ExistingClaim::TakeOver(ClaimTag::takeover_of(tag, route_name, now, invocation_id))
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
    /// For a CSV index: the rows refused (the others are used).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused_rows: Vec<super::classify::RefusedRow>,
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
            refused_rows: Vec::new(),
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

/// Where a manual retry puts `failed/<failed_name>` back, relative to
/// `source_dir`: the original path recorded in its report (a recursive
/// route's `a/b.pdf` goes back to `a/b.pdf`, keeping its identity and so its
/// idempotency key), or, without a usable one, the failed name at the top.
/// A recorded path is used only when it is a plain relative path outside the
/// work folders and carries no `%` (which could be an escape of a
/// non-UTF-8 byte rather than the character itself).
pub fn retry_target(failed_name: &str, recorded_source_path: Option<&str>) -> String {
    let usable = |p: &str| {
        !p.is_empty()
            && !p.contains(['\0', '\\', '%'])
            && p.split('/').all(|s| !s.is_empty() && !s.starts_with('.'))
            && p.split('/').next() != Some(FAILED_DIR)
    };
    match recorded_source_path {
        Some(p) if usable(p) => p.to_owned(),
        _ => failed_name.to_owned(),
    }
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
        assert_eq!((next.attempt, next.claimed_at), (2, 2801));
        assert_eq!(ClaimTag::parse(&next.dir_name()), Some(next.clone()));
        // Another stale claim taken over by the same run in the same second
        // gets another name; the same claim taken over by another run too.
        let other = ClaimTag::new("r", 1, 1000, "inv-b");
        let ExistingClaim::TakeOver(next_b) = decide_existing(&other, "r", 2801, 1800, 3, "inv2")
        else {
            panic!("expected takeover");
        };
        assert_ne!(next.dir_name(), next_b.dir_name());
        let ExistingClaim::TakeOver(again) = decide_existing(&t, "r", 2801, 1800, 3, "inv2") else {
            panic!("expected takeover");
        };
        assert_eq!(again, next, "deterministic for one run and one claim");
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
    fn given_claim_released_on_outage_when_found_next_then_taken_over_without_spending_an_attempt()
    {
        let t = ClaimTag::new("r", 1, 5000, "inv");
        let rel = t.released(1800);
        assert_eq!(rel.attempt, 0);
        assert_eq!(ClaimTag::parse(&rel.dir_name()), Some(rel.clone()));
        let ExistingClaim::TakeOver(next) = decide_existing(&rel, "r", 5001, 1800, 3, "inv2")
        else {
            panic!("expected an immediate takeover");
        };
        assert_eq!(next.attempt, 1);
        let last = ClaimTag::new("r", 3, 5000, "inv").released(1800);
        assert!(matches!(
            decide_existing(&last, "r", 5001, 1800, 3, "x"),
            ExistingClaim::TakeOver(ClaimTag { attempt: 3, .. })
        ));
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
    fn given_recorded_source_path_when_retried_then_back_at_it_unless_unsafe() {
        assert_eq!(retry_target("a__b.pdf", Some("a/b.pdf")), "a/b.pdf");
        assert_eq!(retry_target("a__b.pdf", None), "a__b.pdf");
        for bad in [
            "../x",
            "/etc/x",
            "a/../b",
            ".inflight/x",
            "failed/x",
            "a%2Fb",
            "a//b",
            "",
        ] {
            assert_eq!(retry_target("f.pdf", Some(bad)), "f.pdf", "{bad:?}");
        }
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
