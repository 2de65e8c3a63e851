//! An emulator of the OpenText Content Server REST API (to be written).
