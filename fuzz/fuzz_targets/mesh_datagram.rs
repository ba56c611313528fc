//! The path-probe mesh's UDP datagram (agent/src/probes/paths/mesh.rs):
//! bytes from any host on the network.
//!
//! Asserts: checking and decoding never panic and nothing unsigned passes
//! the MAC check; the layout under the MAC (what a router quotes back, and
//! what is parsed once a MAC verifies) re-encodes to exactly the same bytes
//! (one encoding per value), and the re-encoded, re-signed datagram decodes
//! to the same value.
#![no_main]

use graydar_agent::probes::paths::auth::{MAC_LEN, MeshKey, MeshKeys};
use graydar_agent::probes::paths::mesh;
use libfuzzer_sys::fuzz_target;

fn key(id: u8) -> MeshKey {
    MeshKey::new(id, &[0x42; 32]).expect("a 32-byte key")
}

fuzz_target!(|data: &[u8]| {
    // The seeds are signed with key 1; a changed byte must not verify.
    let keys = MeshKeys::new(1, vec![key(1)]).expect("keys");
    let verified = mesh::decode(data, Some(&keys));
    let Ok(d) = mesh::decode_unverified(data) else {
        assert!(verified.is_err(), "a datagram that does not parse verified");
        return;
    };
    let bytes = mesh::encode(&d, &key(d.header.key_id));
    assert_eq!(
        bytes[..bytes.len() - MAC_LEN],
        data[..data.len() - MAC_LEN],
        "decode then encode changed the datagram: {d:?}"
    );
    assert!(bytes.len() <= mesh::MAX_DATAGRAM, "{} bytes > MAX_DATAGRAM", bytes.len());
    if let Ok(v) = &verified {
        assert_eq!(v, &d, "verified and unverified decoding disagree");
        assert_eq!(bytes, data, "a verified datagram is the one we would send");
    }
    let own = MeshKeys::new(d.header.key_id, vec![key(d.header.key_id)]).expect("keys");
    let again = mesh::decode(&bytes, Some(&own)).expect("an encoded datagram decodes");
    assert_eq!(again, d);
});
