//! xecm-core: everything the three xecm-sftp Lambda functions share.
//!
//! - `domain`: validated configuration and pure decisions (no I/O);
//! - `ports`: the small async traits the flows talk to;
//! - `adapters`: the production implementations of the ports (ssh2, reqwest, AWS SDK);
//! - `flows`: orchestration of ingest, export and snapshot over the ports;
//! - `runtime`: the one place that runs a handler under Lambda or once locally.

pub mod adapters;
pub mod config;
pub mod domain;
pub mod flows;
pub mod ports;
pub mod runtime;
pub mod schema;
