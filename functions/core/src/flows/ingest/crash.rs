//! Crash points: the named step boundaries of one file's ingest (and the
//! middle of its upload) where the crash matrix (issue 15) kills a run to
//! prove that a rerun loses and duplicates nothing.
//!
//! Two switches, neither of which exists in a release build:
//! - in debug builds, the environment variable `XECM_INGEST_CRASH_AT=<point>`
//!   aborts the process there (for tests that kill the real binary);
//! - in unit tests, a task-local point set with [`CRASH_AT`] panics there,
//!   which ends the run future as abruptly as a kill (nothing after the
//!   point runs; what the ports hold is what a crash leaves).

/// Every point, in the order a file passes them.
pub const POINTS: &[&str] = &[
    CLAIMED,
    SIDECAR_CLAIMED,
    CLASSIFIED,
    MARKED,
    MID_UPLOAD,
    UPLOADED,
    HISTORY_WRITTEN,
    VERIFIED,
    ARCHIVED,
    SOURCE_FINISHED,
];

/// The document is renamed into its claim; its sidecar not yet.
pub const CLAIMED: &str = "claimed";
/// Document and sidecar are in the claim.
pub const SIDECAR_CLAIMED: &str = "sidecar-claimed";
/// Read, classified and planned; nothing written to the ECM yet.
pub const CLASSIFIED: &str = "classified";
/// add-version: the document carries our pending key; no version yet.
pub const MARKED: &str = "marked";
/// Half of the bytes have gone into the upload.
pub const MID_UPLOAD: &str = "mid-upload";
/// The document or version exists; history not final, no RM, not verified.
pub const UPLOADED: &str = "uploaded";
/// Final transfer history written; RM and hold not applied.
pub const HISTORY_WRITTEN: &str = "history-written";
/// Verified in the ECM; the source not moved.
pub const VERIFIED: &str = "verified";
/// The document is archived; its sidecar not yet.
pub const ARCHIVED: &str = "archived";
/// Document and sidecar archived; the event not published, claim
/// directory not removed.
pub const SOURCE_FINISHED: &str = "source-finished";

#[cfg(test)]
tokio::task_local! {
    /// The point at which the current test run "crashes".
    pub static CRASH_AT: &'static str;
}

/// Passes a crash point (a no-op in release builds).
#[inline]
pub(super) fn point(name: &'static str) {
    #[cfg(test)]
    if CRASH_AT.try_with(|p| *p == name).unwrap_or(false) {
        panic!("crash point {name}");
    }
    #[cfg(debug_assertions)]
    if std::env::var("XECM_INGEST_CRASH_AT").is_ok_and(|v| v == name) {
        eprintln!("XECM_INGEST_CRASH_AT={name}: aborting the process here");
        std::process::abort();
    }
    let _ = name;
}
