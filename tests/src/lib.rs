//! The local stack for tests and the demo: OpenSSH sshd, moto and the Content
//! Server emulator on 127.0.0.1, started and stopped by code, plus the
//! Lambda Runtime API harness for end-to-end tests.

pub mod ecm_user;
pub mod fault_proxy;
pub mod lambda;
pub mod latency_proxy;
pub mod moto;
pub mod process;
pub mod reference;
pub mod sftp_servers;
pub mod sshd;
pub mod stack;
