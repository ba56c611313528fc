//! The console's sessions: a token (viewer or operator) is exchanged at
//! login for a signed cookie, and every state-changing form carries a CSRF
//! token bound to that cookie.
//!
//! The cookie is signed, not looked up:
//! `v2.<role>.<expires>.<token fingerprint>.<session id>.<mac>`,
//! HMAC-SHA256 under a key derived from the configured tokens
//! ([`Tokens::session_key`]), so every replica with the same tokens accepts
//! it, it ends when it expires ([`SESSION_TTL`]) or when the token it was
//! made from is no longer configured, and changing the tokens ends every
//! session. A logout also writes the session's id (random, 128 bits) to the
//! store until it would have expired, and a session whose id is there is
//! refused (`console/mod.rs`): a copy of a logged-out cookie works nowhere.
//! The CSRF token is an HMAC of the cookie: a page of another site can
//! neither read it nor make it.

use std::time::Duration;

use graydar_common::api::Role;
use hex::FromHex as _;
use ring::hmac;

use crate::auth::Tokens;

/// The session cookie's name.
pub const COOKIE: &str = "graydar_session";
/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// A logged-in user of the console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub role: Role,
    /// The hidden field every form posts back.
    pub csrf: String,
    /// The session's random id (what a logout records).
    pub id: String,
    /// When it expires (Unix seconds).
    pub expires_s: u64,
}

impl Session {
    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }
}

fn key(tokens: &Tokens) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, &tokens.session_key())
}

fn csrf_of(key: &hmac::Key, cookie: &str) -> String {
    let tag = hmac::sign(key, format!("csrf.{cookie}").as_bytes());
    hex::encode(&tag.as_ref()[..16])
}

/// A session id: 128 random bits in hex, as [`crate::auth::generate_token`]
/// makes them.
fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The cookie value for a login with `presented` at `now_s` (Unix seconds)
/// as the session `id` ([`crate::auth::generate_token`]); `None` when it is no viewer or
/// operator token.
pub fn login(tokens: &Tokens, presented: &[u8], now_s: u64, id: &str) -> Option<String> {
    let (role, fp) = tokens.fingerprint_of(presented)?;
    if !matches!(role, Role::Viewer | Role::Operator) || !is_id(id) {
        return None;
    }
    let body = format!(
        "v2.{}.{}.{}.{id}",
        role.as_str(),
        now_s.saturating_add(SESSION_TTL.as_secs()),
        hex::encode(fp)
    );
    let tag = hmac::sign(&key(tokens), body.as_bytes());
    Some(format!("{body}.{}", hex::encode(tag.as_ref())))
}

/// The session a cookie value stands for at `now_s`, if it is genuine,
/// unexpired and its token is still configured (whether it was logged out
/// is the store's to say).
pub fn check(tokens: &Tokens, cookie: &str, now_s: u64) -> Option<Session> {
    let (body, mac) = cookie.rsplit_once('.')?;
    let mac = <[u8; 32]>::from_hex(mac).ok()?;
    let k = key(tokens);
    hmac::verify(&k, body.as_bytes(), &mac).ok()?;
    let mut parts = body.split('.');
    let (Some("v2"), Some(role), Some(expires), Some(fp), Some(id), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let role: Role = role.parse().ok()?;
    let expires: u64 = expires.parse().ok()?;
    let fp = <[u8; 8]>::from_hex(fp).ok()?;
    if now_s >= expires || !tokens.has_fingerprint(role, &fp) || !is_id(id) {
        return None;
    }
    Some(Session {
        role,
        csrf: csrf_of(&k, cookie),
        id: id.to_owned(),
        expires_s: expires,
    })
}

/// Whether `presented` is the CSRF token of `session` (constant time).
pub fn csrf_ok(session: &Session, presented: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    session.csrf.len() == presented.len() && bool::from(session.csrf.as_bytes().ct_eq(presented.as_bytes()))
}

/// The `Set-Cookie` of a session (`Secure` when served over TLS).
pub fn set_cookie(value: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` that ends the session in the browser.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The session cookie's value among a request's `Cookie` headers.
pub fn from_headers(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIEWER: &str = "viewer-token-0123456789";
    const ID: &str = "00112233445566778899aabbccddeeff";
    const ID2: &str = "ffeeddccbbaa99887766554433221100";
    const OPERATOR: &str = "operator-token-0123456789";

    fn tokens() -> Tokens {
        Tokens::parse(&format!(
            "agent:agent-token-0123456789\nviewer:{VIEWER}\noperator:{OPERATOR}"
        ))
        .expect("tokens")
    }

    #[test]
    fn a_login_gives_a_session_of_its_role_until_it_expires() {
        let t = tokens();
        let c = login(&t, OPERATOR.as_bytes(), 1_000, ID).expect("operator");
        let s = check(&t, &c, 1_001).expect("valid");
        assert_eq!(s.role, Role::Operator);
        assert!(csrf_ok(&s, &s.csrf));
        assert!(!csrf_ok(&s, "0000"));
        let v = check(&t, &login(&t, VIEWER.as_bytes(), 1_000, ID2).expect("viewer"), 1_001).expect("valid");
        assert_eq!(v.role, Role::Viewer);
        assert_ne!(v.csrf, s.csrf, "a CSRF token per session");
        assert_eq!((s.id.as_str(), s.expires_s), (ID, 1_000 + SESSION_TTL.as_secs()));
        // Two logins with one token in the same second are two sessions.
        let again = check(
            &t,
            &login(&t, OPERATOR.as_bytes(), 1_000, ID2).expect("operator"),
            1_001,
        )
        .expect("valid");
        assert_ne!((again.id, again.csrf), (s.id.clone(), s.csrf.clone()));
        assert!(
            login(&t, OPERATOR.as_bytes(), 1_000, "not-hex").is_none(),
            "an id that is no id"
        );
        assert!(check(&t, &c, 1_000 + SESSION_TTL.as_secs()).is_none(), "expired");
    }

    #[test]
    fn the_agent_token_and_unknown_tokens_do_not_log_in() {
        let t = tokens();
        assert!(login(&t, b"agent-token-0123456789", 0, ID).is_none());
        assert!(login(&t, b"not-a-token-at-all-xx", 0, ID).is_none());
    }

    #[test]
    fn a_forged_or_altered_cookie_is_refused() {
        let t = tokens();
        let c = login(&t, VIEWER.as_bytes(), 1_000, ID2).expect("viewer");
        let promoted = c.replacen("viewer", "operator", 1);
        assert!(check(&t, &promoted, 1_001).is_none(), "role changed");
        let parts: Vec<&str> = c.split('.').collect();
        let extended = format!(
            "{}.{}.{}.{}.{}.{}",
            parts[0], parts[1], 9_999_999_999u64, parts[3], parts[4], parts[5]
        );
        assert!(check(&t, &extended, 1_001).is_none(), "expiry changed");
        let other_id = format!("{}.{}.{}.{}.{ID}.{}", parts[0], parts[1], parts[2], parts[3], parts[5]);
        assert!(check(&t, &other_id, 1_001).is_none(), "session id changed");
        let v1 = format!("v1.{}.{}.{}.{}", parts[1], parts[2], parts[3], parts[5]);
        for bad in ["", "v2", "v2.viewer.1.2.3.4", "x.y", &c[..c.len() - 2], &v1] {
            assert!(check(&t, bad, 1_001).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn changing_the_tokens_ends_the_sessions_made_from_them() {
        let t = tokens();
        let c = login(&t, OPERATOR.as_bytes(), 1_000, ID).expect("operator");
        let rotated = Tokens::parse(&format!("viewer:{VIEWER}\noperator:operator-token-9876543210")).expect("tokens");
        assert!(check(&rotated, &c, 1_001).is_none());
    }

    #[test]
    fn the_cookie_is_http_only_same_site_strict_and_secure_over_tls() {
        let plain = set_cookie("x", false);
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict") && !plain.contains("Secure"));
        assert!(set_cookie("x", true).ends_with("; Secure"));
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            "a=b; graydar_session=v1.x; c=d".parse().expect("header"),
        );
        assert_eq!(from_headers(&h).as_deref(), Some("v1.x"));
    }
}
