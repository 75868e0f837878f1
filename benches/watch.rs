//! Placeholder: the watch benchmark is being written.
fn main() {}
