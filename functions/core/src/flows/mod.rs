//! Flows: orchestration over the ports, deadline-aware.

pub mod backup;
pub mod export;
pub mod file_lease;
pub mod ingest;
pub mod plan;
