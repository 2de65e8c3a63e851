//! Pure domain code: checked newtypes, routes, rules and templates. No I/O.

pub mod audit;
pub mod backup;
pub mod batch;
pub mod claim;
pub mod classify;
pub mod export_history;
pub mod export_route;
pub mod fanout;
pub mod manifest;
pub mod names;
pub mod paths;
pub mod placement;
pub mod readiness;
pub mod route;
#[cfg(test)]
mod samples;
pub mod schema_ref;
pub mod snapshot_names;
pub mod template;
pub mod transfer;
pub mod webhook;
pub mod work_message;
