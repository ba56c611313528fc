//! Bearer tokens with roles, compared in constant time.
//!
//! Tokens come from a file and/or `GRAYDAR_TOKENS`, one `role:token` per line
//! (or comma-separated); `#` starts a comment. Roles: `agent` (the fleet's
//! bootstrap token: enrollment only), `viewer` (read), `operator`
//! (everything). Agents call with the per-agent credential enrollment
//! returned ([`Principal::Agent`]).

use graydar_common::api::Role;
use subtle::ConstantTimeEq as _;

/// Shortest token accepted (bytes).
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Clone, Default)]
pub struct Tokens {
    tokens: Vec<(Vec<u8>, Role)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("Tokens").field("count", &self.tokens.len()).finish()
    }
}

/// Who a request is, from its bearer token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A configured token of this role. An `agent` token is the fleet's
    /// bootstrap token: it only enrolls ([`Permission::Enroll`]).
    Token(Role),
    /// The per-agent credential of this hostname, bound to it at enrollment
    /// (controller/src/agents/credentials.rs).
    Agent(String),
}

impl Principal {
    /// The hostname an agent credential is bound to.
    pub fn agent_hostname(&self) -> Option<&str> {
        match self {
            Principal::Agent(h) => Some(h),
            Principal::Token(_) => None,
        }
    }

    /// For messages: `operator token`, `agent credential of node-a`.
    pub fn describe(&self) -> String {
        match self {
            Principal::Token(r) => format!("{} token", r.as_str()),
            Principal::Agent(h) => format!("agent credential of {h:?}"),
        }
    }
}

/// What an endpoint needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// register: the bootstrap (`agent`) token, an agent's own credential, or `operator`.
    Enroll,
    /// heartbeat / report / fault polling of one agent: that agent's
    /// credential (its hostname must be the path's) or `operator`.
    Report,
    /// read: `viewer` or `operator`.
    Read,
    /// any valid token (the OpenAPI document).
    Any,
    /// change things (faults): `operator` only.
    Operate,
}

impl Permission {
    pub fn allows(self, who: &Principal) -> bool {
        matches!(
            (self, who),
            (_, Principal::Token(Role::Operator))
                | (Permission::Any, _)
                | (Permission::Enroll, Principal::Token(Role::Agent) | Principal::Agent(_))
                | (Permission::Report, Principal::Agent(_))
                | (Permission::Read, Principal::Token(Role::Viewer))
        )
    }

    /// Why `who` may not: for the 403's message.
    pub fn refusal(self, who: &Principal) -> String {
        match (self, who) {
            (Permission::Report, Principal::Token(Role::Agent)) => "the agent (bootstrap) token only enrolls: \
                 present the agent's own credential, enrolled with POST /api/v1/agents/register"
                .to_owned(),
            _ => format!("the {} may not do this", who.describe()),
        }
    }
}

/// A token entry that cannot be used (`line` counts from 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("line {line}: expected role:token")]
    Syntax { line: usize },
    #[error("line {line}: {message}")]
    Role { line: usize, message: String },
    #[error("line {line}: a {role} token must be at least {MIN_TOKEN_LEN} characters")]
    Short { line: usize, role: &'static str },
}

impl Tokens {
    /// Parses `role:token` entries separated by newlines or commas.
    pub fn parse(text: &str) -> Result<Tokens, TokenError> {
        let mut out = Tokens::default();
        out.add(text)?;
        Ok(out)
    }

    pub fn add(&mut self, text: &str) -> Result<(), TokenError> {
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default();
            for entry in line.split(',') {
                let entry = entry.trim();
                if entry.is_empty() {
                    continue;
                }
                let line = n + 1;
                let (role, token) = entry.split_once(':').ok_or(TokenError::Syntax { line })?;
                let role: Role = role
                    .trim()
                    .parse()
                    .map_err(|message| TokenError::Role { line, message })?;
                let token = token.trim();
                if token.len() < MIN_TOKEN_LEN {
                    return Err(TokenError::Short {
                        line,
                        role: role.as_str(),
                    });
                }
                self.tokens.push((token.as_bytes().to_vec(), role));
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The role of `presented`, comparing against every configured token in
    /// constant time (no early exit; only the length of a token can leak).
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let mut found = None;
        for (t, role) in &self.tokens {
            if bool::from(t.as_slice().ct_eq(presented)) {
                found = Some(*role);
            }
        }
        found
    }
}

impl Tokens {
    /// The key the web console signs its session cookies with: derived from
    /// every configured token, so every controller with the same tokens
    /// (replicas) accepts the same sessions, and changing the tokens ends
    /// every session.
    pub fn session_key(&self) -> [u8; 32] {
        let mut entries: Vec<String> = self
            .tokens
            .iter()
            .map(|(t, r)| format!("{}:{}", r.as_str(), String::from_utf8_lossy(t)))
            .collect();
        entries.sort();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"graydar console session key v1\0");
        for e in &entries {
            ctx.update(e.as_bytes());
            ctx.update(b"\0");
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }

    /// The role and fingerprint (first 8 bytes of its SHA-256) of
    /// `presented`, if it is a configured token.
    pub fn fingerprint_of(&self, presented: &[u8]) -> Option<(Role, [u8; 8])> {
        let role = self.role_of(presented)?;
        Some((role, fingerprint(presented)))
    }

    /// Whether a token of `role` with this fingerprint is still configured
    /// (a session ends with its token).
    pub fn has_fingerprint(&self, role: Role, fp: &[u8; 8]) -> bool {
        self.tokens
            .iter()
            .any(|(t, r)| *r == role && bool::from(fingerprint(t).ct_eq(fp)))
    }
}

fn fingerprint(token: &[u8]) -> [u8; 8] {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&d.as_ref()[..8]);
    fp
}

/// A random token (for `cargo xtask run` and tests): 32 hex digits from the
/// kernel's random source.
pub fn generate_token() -> std::io::Result<String> {
    let mut buf = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)?;
    Ok(hex::encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_roles_and_matches_exact_tokens_only() {
        let t =
            Tokens::parse("# comment\nagent:aaaaaaaaaaaaaaaa\nviewer: bbbbbbbbbbbbbbbb , operator:cccccccccccccccc\n")
                .expect("parse");
        assert_eq!(t.len(), 3);
        assert_eq!(t.role_of(b"aaaaaaaaaaaaaaaa"), Some(Role::Agent));
        assert_eq!(t.role_of(b"bbbbbbbbbbbbbbbb"), Some(Role::Viewer));
        assert_eq!(t.role_of(b"cccccccccccccccc"), Some(Role::Operator));
        assert_eq!(t.role_of(b"aaaaaaaaaaaaaaa"), None);
        assert_eq!(t.role_of(b"aaaaaaaaaaaaaaaab"), None);
        assert_eq!(t.role_of(b""), None);
        assert!(Tokens::parse("admin:aaaaaaaaaaaaaaaa").is_err());
        assert!(Tokens::parse("agent:short").is_err());
        assert!(Tokens::parse("aaaaaaaaaaaaaaaa").is_err());
    }

    #[test]
    fn permissions_by_principal() {
        let (bootstrap, viewer, operator) = (
            Principal::Token(Role::Agent),
            Principal::Token(Role::Viewer),
            Principal::Token(Role::Operator),
        );
        let agent = Principal::Agent("node-a".into());
        let may = |p: Permission| {
            [&bootstrap, &viewer, &operator, &agent]
                .into_iter()
                .map(|w| p.allows(w))
                .collect::<Vec<_>>()
        };
        //                                       bootstrap viewer operator agent
        assert_eq!(may(Permission::Enroll), [true, false, true, true]);
        assert_eq!(may(Permission::Report), [false, false, true, true]);
        assert_eq!(may(Permission::Read), [false, true, true, false]);
        assert_eq!(may(Permission::Operate), [false, false, true, false]);
        assert_eq!(may(Permission::Any), [true, true, true, true]);
        assert!(Permission::Report.refusal(&bootstrap).contains("only enrolls"));
        assert_eq!(
            Permission::Operate.refusal(&agent),
            "the agent credential of \"node-a\" may not do this"
        );
    }

    #[test]
    fn generated_tokens_are_long_enough_and_differ() {
        let a = generate_token().expect("token");
        assert!(a.len() >= MIN_TOKEN_LEN);
        assert_ne!(a, generate_token().expect("token"));
    }
}
