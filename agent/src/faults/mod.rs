//! Fault injection (issue 5). So far: netem options (netem.rs).
pub mod netem;
