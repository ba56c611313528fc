//! Bearer tokens with roles, compared in constant time.
//!
//! Tokens come from a file and/or `GRAYDAR_TOKENS`, one `role:token` per line
//! (or comma-separated); `#` starts a comment. Roles: `agent` (register,
//! heartbeat, report), `viewer` (read), `operator` (everything).

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

/// What an endpoint needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// register / heartbeat / report: `agent` or `operator`.
    Report,
    /// read: `viewer` or `operator`.
    Read,
    /// any valid token (the OpenAPI document).
    Any,
    /// change things (faults): `operator` only.
    Operate,
}

impl Permission {
    pub fn allows(self, role: Role) -> bool {
        match self {
            Permission::Report => matches!(role, Role::Agent | Role::Operator),
            Permission::Read => matches!(role, Role::Viewer | Role::Operator),
            Permission::Any => true,
            Permission::Operate => matches!(role, Role::Operator),
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

/// A random token (for `cargo xtask run` and tests): 32 hex digits from the
/// kernel's random source.
pub fn generate_token() -> std::io::Result<String> {
    let mut buf = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
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
    fn permissions_by_role() {
        assert!(Permission::Report.allows(Role::Agent));
        assert!(!Permission::Report.allows(Role::Viewer));
        assert!(Permission::Read.allows(Role::Viewer));
        assert!(!Permission::Read.allows(Role::Agent));
        assert!(Permission::Read.allows(Role::Operator) && Permission::Report.allows(Role::Operator));
    }

    #[test]
    fn generated_tokens_are_long_enough_and_differ() {
        let a = generate_token().expect("token");
        assert!(a.len() >= MIN_TOKEN_LEN);
        assert_ne!(a, generate_token().expect("token"));
    }
}
