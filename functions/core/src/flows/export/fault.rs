//! Fault switch for crash tests: stops an export at a named step.
//!
//! Two ways to throw it, both only in builds with debug assertions (test and
//! debug builds); in a release build [`hit`] does nothing and compiles to
//! nothing, whatever the environment says:
//! - the environment variable `XECM_EXPORT_FAULT=<point>` makes the process
//!   abort at that point (a crash: no clean-up, no answer), for crash tests
//!   of the real binary;
//! - [`arm`] in a unit test makes the flow stop there with
//!   [`ExportError::Fault`] (the invocation ends; nothing after the point
//!   runs), for the current thread only, so parallel tests do not meet.

use super::ExportError;

/// The named steps a crash test can stop at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Lease taken, nothing transferred.
    Leased,
    /// Part of the body is in the temporary file.
    MidUpload,
    /// The whole body is in the temporary file, not renamed yet.
    AfterUpload,
    /// Renamed into place; no sidecar, event or history yet.
    AfterRename,
    /// Sidecar written; no event, no history.
    BeforeEvent,
    /// Event published; no history.
    BeforeHistory,
    /// A package's first entry is written, the rest not.
    PackageMidBuild,
    /// A package is complete under its temporary name.
    PackageBeforeRename,
}

impl Point {
    pub const ALL: [Point; 8] = [
        Point::Leased,
        Point::MidUpload,
        Point::AfterUpload,
        Point::AfterRename,
        Point::BeforeEvent,
        Point::BeforeHistory,
        Point::PackageMidBuild,
        Point::PackageBeforeRename,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Point::Leased => "leased",
            Point::MidUpload => "mid-upload",
            Point::AfterUpload => "after-upload",
            Point::AfterRename => "after-rename",
            Point::BeforeEvent => "before-event",
            Point::BeforeHistory => "before-history",
            Point::PackageMidBuild => "package-mid-build",
            Point::PackageBeforeRename => "package-before-rename",
        }
    }

    pub fn parse(s: &str) -> Option<Point> {
        Point::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

#[cfg(debug_assertions)]
thread_local! {
    static ARMED: std::cell::Cell<Option<Point>> = const { std::cell::Cell::new(None) };
}

/// Arms the switch at `point` for this thread (`None` disarms).
#[cfg(debug_assertions)]
pub fn arm(point: Option<Point>) {
    ARMED.with(|a| a.set(point));
}

/// Stops here if the switch is set to `point`.
#[cfg(debug_assertions)]
pub fn hit(point: Point) -> Result<(), ExportError> {
    if std::env::var("XECM_EXPORT_FAULT").is_ok_and(|v| v == point.as_str()) {
        eprintln!("XECM_EXPORT_FAULT: aborting at {}", point.as_str());
        std::process::abort();
    }
    if ARMED.with(|a| a.get()) == Some(point) {
        ARMED.with(|a| a.set(None));
        return Err(ExportError::Fault {
            point: point.as_str(),
        });
    }
    Ok(())
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_point: Point) -> Result<(), ExportError> {
    Ok(())
}
