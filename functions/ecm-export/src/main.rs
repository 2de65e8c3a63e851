//! The ecm-export Lambda function (to be wired).

use std::process::ExitCode;

use xecm_core::runtime::{self, FunctionError, Invocation};

async fn handle(
    event: serde_json::Value,
    invocation: Invocation,
) -> Result<serde_json::Value, FunctionError> {
    let _ = invocation;
    Err(FunctionError::permanent(
        "NotImplemented",
        format!("event {event} not handled yet"),
    ))
}

#[tokio::main]
async fn main() -> ExitCode {
    runtime::init_tracing();
    runtime::serve("ecm-export", handle).await
}
