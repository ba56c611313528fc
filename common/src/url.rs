//! URL pieces of the controller API, shared by the blocking client (CLI,
//! tests) and the agent's async channel.

/// Percent-encodes one path segment (hostnames and ids are usually safe).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
