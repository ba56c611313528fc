//! graydar controller: agent registry, findings history, faults and the
//! path matrix behind a REST API over SQLite or PostgreSQL (sqlx), bearer-token auth with
//! roles, optional TLS (rustls); and the `graydar` CLI.
//!
//! Layers (each depends only on those below it):
//! - `api`: HTTP only (routes, extractors, errors, OpenAPI);
//! - `services` wires the domain: `agents`, `findings`, `faults`, `paths`
//!   (no HTTP, no SQL);
//! - `store`: every SQL statement, behind the `Store` trait.
//!
//! `auth`, `config`, `metrics` and `timefmt` are used by any layer. `cli` is
//! a client of the API through `graydar_common` only.
pub mod agents;
pub mod api;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod faults;
pub mod findings;
pub mod gamedays;
pub mod metrics;
pub mod paths;
pub mod services;
pub mod store;
pub mod timefmt;
