#![no_std]
// This file exists so agent/Cargo.toml can name this crate as a
// build-dependency (cargo ignores bin-only build-dependencies); the programs
// are the binary in main.rs.
