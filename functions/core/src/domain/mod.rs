//! Pure domain code: checked newtypes, routes, rules and templates. No I/O.

pub mod paths;
