//! The path-probe mesh's UDP datagram (agent/src/probes/paths/mesh.rs):
//! bytes from any host on the network.
//!
//! Asserts: decoding never panics; a datagram that decodes re-encodes to
//! exactly the same bytes (the format has one encoding per value), and the
//! re-encoded bytes decode to the same value.
#![no_main]

use graydar_agent::probes::paths::mesh;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(d) = mesh::decode(data) else { return };
    let bytes = mesh::encode(&d);
    assert_eq!(bytes, data, "decode then encode changed the datagram: {d:?}");
    assert!(
        bytes.len() <= mesh::MAX_DATAGRAM,
        "{} bytes > MAX_DATAGRAM",
        bytes.len()
    );
    let again = mesh::decode(&bytes).expect("an encoded datagram decodes");
    assert_eq!(again, d);
});
