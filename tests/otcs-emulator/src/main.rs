//! otcs-emulator binary (to be written).
fn main() {}
