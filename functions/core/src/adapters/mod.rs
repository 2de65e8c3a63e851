//! Production adapters of the ports.

pub mod aws;
pub mod otcs;
pub mod sftp;
