//! Pure domain code: checked newtypes, routes, rules and templates. No I/O.

pub mod names;
pub mod paths;
pub mod template;
pub mod transfer;
