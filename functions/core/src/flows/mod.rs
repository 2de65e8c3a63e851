//! Flows: orchestration over the ports, deadline-aware.

pub mod export;
pub mod ingest;
