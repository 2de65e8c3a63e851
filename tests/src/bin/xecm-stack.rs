//! Starts the whole local stack in the foreground (to be written).
fn main() {}
