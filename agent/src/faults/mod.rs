//! Fault injection (issue 5). So far: the journal (journal.rs) and netem options (netem.rs).
pub mod journal;
pub mod netem;
pub mod tc;
