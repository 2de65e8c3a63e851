//! The backup-snapshot Lambda function.
//!
//! Not built yet: the snapshot flow (walk ECM roots, write files and a
//! JSON-lines manifest under `backups/{id}.partial/`, incremental, continue
//! by event near the deadline, verify) has no issue yet. The domain already
//! has its configuration, manifest records and retention rules
//! (`domain::backup`, `domain::manifest`). Until the flow exists the function
//! refuses every event with a permanent error saying so, rather than
//! pretending to take a snapshot.

use std::process::ExitCode;

use xecm_core::runtime::{self, FunctionError, Invocation};

async fn handle(
    _event: serde_json::Value,
    _invocation: Invocation,
) -> Result<serde_json::Value, FunctionError> {
    Err(FunctionError::permanent(
        "NotImplemented",
        "backup-snapshot: the snapshot flow is not built yet; no snapshot was taken",
    ))
}

#[tokio::main]
async fn main() -> ExitCode {
    runtime::init_tracing();
    runtime::serve("backup-snapshot", handle).await
}
