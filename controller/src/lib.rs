//! graydar controller: agent registry, findings history and REST API over
//! SQLite (sqlx), bearer-token auth with roles, optional TLS (rustls).
pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod faults;
pub mod metrics;
pub mod paths;
pub mod store;
pub mod timefmt;
