//! Fault injection (issue 5). So far: the engine (engine.rs: journal → snapshot → apply, leases,
//! recovery), the journal (journal.rs), netem options (netem.rs) and qdiscs over netlink (tc.rs).
pub mod assign;
pub mod caps;
pub mod dm;
pub mod engine;
pub mod inventory;
pub mod journal;
pub mod netem;
pub mod route;
pub mod runtime;
pub mod tc;
pub mod tree;
