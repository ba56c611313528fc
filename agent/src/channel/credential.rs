//! The agent's own controller credential: a secret the agent generates and
//! keeps in `<state_dir>/controller-credential` (mode 0600, written
//! atomically before it is used), whose SHA-256 enrollment with the fleet's
//! bootstrap token (`[controller] token`, role `agent`) binds to this
//! hostname; a restarted agent presents it instead of enrolling again (the
//! controller binds a hostname once).

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use graydar_common::api::CREDENTIAL_PREFIX;

/// The file name under the state directory.
pub const FILE: &str = "controller-credential";

/// The credential file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the system random source failed")]
    Random,
    #[error(
        "{}: not a credential (one line of printable ASCII); remove the file to enroll again \
         (an operator first resets the hostname's credential: `graydar agents reset-credential <hostname>`)",
        path.display()
    )]
    Garbled { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CredentialError + '_ {
    move |source| CredentialError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A new credential: the prefix and 32 random bytes in hex.
pub fn generate() -> Result<String, CredentialError> {
    let mut raw = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw).map_err(|_| CredentialError::Random)?;
    Ok(format!("{CREDENTIAL_PREFIX}{}", hex(&raw)))
}

/// What enrollment sends: the SHA-256 of `secret`, 64 lowercase hex digits.
pub fn digest_hex(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The stored credential, or `None` when there is no file yet.
pub fn load(path: &Path) -> Result<Option<String>, CredentialError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let text = std::str::from_utf8(&bytes).map(str::trim).unwrap_or_default();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CredentialError::Garbled { path: path.to_owned() });
    }
    Ok(Some(text.to_owned()))
}

/// Stores `secret` at `path`: a temporary file (0600) written and synced,
/// renamed over `path`, the directory synced; the directory is created
/// (0700) when missing.
pub fn save(path: &Path, secret: &str) -> Result<(), CredentialError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(secret.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_credentials_differ_and_their_digest_is_sha256_hex() {
        let (a, b) = (generate().expect("a"), generate().expect("b"));
        assert_ne!(a, b);
        assert!(
            a.starts_with(CREDENTIAL_PREFIX) && a.len() == CREDENTIAL_PREFIX.len() + 64,
            "{a}"
        );
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            digest_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn saved_credentials_load_back_private_and_bad_files_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state").join(FILE);
        assert_eq!(load(&path).expect("no file"), None);
        save(&path, "gdra_0123").expect("save");
        assert_eq!(load(&path).expect("load").as_deref(), Some("gdra_0123"));
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().expect("dir"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        save(&path, "gdra_4567").expect("replace");
        assert_eq!(load(&path).expect("load").as_deref(), Some("gdra_4567"));
        for bad in [&b""[..], b"  \n", b"two words", b"\xff\xfe"] {
            std::fs::write(&path, bad).expect("write");
            let e = load(&path).expect_err("garbled");
            assert!(e.to_string().contains("remove the file to enroll again"), "{e}");
            assert!(e.to_string().starts_with(&path.display().to_string()), "{e}");
        }
    }
}
