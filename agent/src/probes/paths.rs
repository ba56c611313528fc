//! The paths signal's I/O: the mesh's UDP wire format and sequence tracker
//! (`mesh`, pure), its keys and replay windows (`auth`, pure), its sockets
//! with kernel receive timestamps (`socket`), and Paris-style traceroute on
//! the mesh's own flow (`traceroute`).
pub mod auth;
pub mod mesh;
pub mod socket;
pub mod traceroute;
