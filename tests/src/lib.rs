//! The local stack for tests and the demo: OpenSSH sshd, moto and the Content
//! Server emulator on 127.0.0.1, started and stopped by code.

pub mod moto;
