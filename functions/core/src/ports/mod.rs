//! Ports: the small async traits the flows depend on, so that flows can be
//! unit-tested with in-memory stand-ins and run against the real adapters.

pub mod destinations;
pub mod ecm;
pub mod events;
pub mod file_store;
pub mod queue;
pub mod secrets;
