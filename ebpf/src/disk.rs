//! The disk signal's programs: fsync/fdatasync latency per block device
//! (`fsync`) and block request latency and errors (`block_io`).
mod block_io;
mod fsync;
