//! Types shared between graydar's eBPF programs and user space.
//!
//! Everything outside the `api` module is `#![no_std]`, `#[repr(C)]` and
//! laid out identically on both sides of the kernel boundary.
#![cfg_attr(not(any(feature = "user", feature = "api", test)), no_std)]

pub mod disk;
pub mod drops;
pub mod tcp;

#[cfg(feature = "api")]
pub mod api;

#[cfg(feature = "api")]
pub mod clock;

#[cfg(feature = "api")]
pub mod faults;

#[cfg(feature = "api")]
pub mod fault_api;

#[cfg(feature = "api")]
pub mod paths;

#[cfg(feature = "api")]
pub mod timestamp;

#[cfg(feature = "api")]
pub mod url;

#[cfg(feature = "client")]
pub mod client;

#[cfg(feature = "client")]
pub mod fault_client;

#[cfg(feature = "gameday")]
pub mod gameday;

#[cfg(feature = "api")]
pub mod load;
