//! Production adapters of the ports.

pub mod aws;
pub mod backoff;
pub mod otcs;
pub mod sftp;
pub mod sftp_destinations;
pub mod sqs;
