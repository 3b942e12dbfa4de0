//! The `cryo` command line.
fn main() {}
