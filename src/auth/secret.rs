//! The shared secret: where it comes from, how it is made, and how keys derive from it.
//!
//! The secret is text (trimmed of surrounding whitespace), so the same value works as the
//! course's HMAC key in classic mode and can be pasted into `SOCKIT_SECRET`.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The environment variable read when no secret file is given.
pub const SECRET_ENV: &str = "SOCKIT_SECRET";

/// The shortest secret a server runs with: 16 bytes. Online guessing is throttled, but a
/// short secret still falls to offline guessing from one captured handshake.
pub(crate) const MIN_SERVER_SECRET_LEN: usize = 16;

/// A shared secret. Its `Debug` output never shows the value, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where the secret in use was found; shown to users, never the secret itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// The secret file at this path.
    File(PathBuf),
    /// The `SOCKIT_SECRET` environment variable.
    Env,
    /// The default file did not exist and was just written.
    Created(PathBuf),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(path) => write!(f, "{}", path.display()),
            SecretSource::Env => write!(f, "${SECRET_ENV}"),
            SecretSource::Created(path) => write!(f, "{} (new)", path.display()),
        }
    }
}

/// Why a secret could not be read, written or used.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs, reason = "each variant's #[error] text says what it means")]
pub enum SecretError {
    #[error("cannot read secret file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write secret file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    /// [`Secret::create`] replaces an existing file only when forced to.
    #[error("secret file {0} already exists")]
    Exists(PathBuf),
    #[error("the secret from {0} is empty")]
    Empty(SecretSource),
    #[error(
        "the secret from {from} is {len} bytes; a server needs at least \
         {MIN_SERVER_SECRET_LEN} (make a random one with `sockit keygen`)"
    )]
    TooShort { from: SecretSource, len: usize },
    #[error(
        "secret file {path} is accessible by group or others (mode {mode:03o}); \
         run `chmod 600 {path}`",
        path = .path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    /// No secret file was given, the environment has none, and the default file is missing.
    #[error("no secret: none given, none in {SECRET_ENV}, none in the default file (looked for {0})")]
    Missing(String),
}

impl Secret {
    /// A fresh secret: 32 random bytes as 64 hex characters.
    pub fn generate() -> Secret {
        Secret(hex::encode(rand::random::<[u8; 32]>()))
    }

    /// A secret from its text form; surrounding whitespace is not part of it.
    pub fn from_text(text: &str) -> Option<Secret> {
        let text = text.trim();
        (!text.is_empty()).then(|| Secret(text.to_owned()))
    }

    /// The secret's text, for the HMAC of plaintext sessions.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The Noise pre-shared key: a hash of the secret, so a short or textual secret still
    /// gives a uniformly random 32-byte key.
    pub(crate) fn noise_psk(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(b"sockit noise psk v1\0");
        hash.update(self.as_bytes());
        hash.finalize().into()
    }

    /// Reads the secret from its file (trimmed; an empty file is an error).
    pub fn load(path: &Path) -> Result<Secret, SecretError> {
        let text = fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: path.to_owned(),
            source,
        })?;
        Secret::from_text(&text).ok_or_else(|| SecretError::Empty(SecretSource::File(path.into())))
    }

    /// Writes a fresh secret to `path` with mode 0600, creating parent directories (0700).
    pub fn create(path: &Path, force: bool) -> Result<Secret, SecretError> {
        let write_error = |source| SecretError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(write_error)?;
            if parent.ends_with("sockit") {
                fs::set_permissions(parent, fs::Permissions::from_mode(0o700)).map_err(write_error)?;
            }
        }
        if force {
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(write_error(e)),
                _ => {}
            }
        }
        let secret = Secret::generate();
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => SecretError::Exists(path.to_owned()),
                _ => write_error(e),
            })?;
        writeln!(file, "{}", secret.0)
            .and_then(|()| file.sync_all())
            .map_err(write_error)?;
        Ok(secret)
    }
}

/// Refuses a secret a server must not run with, as ssh refuses a private key others can read:
/// one shorter than `MIN_SERVER_SECRET_LEN`, or one in a file whose mode lets group or
/// others at it. Each refusal names its fix.
pub fn check_server_secret(secret: &Secret, source: &SecretSource) -> Result<(), SecretError> {
    if let SecretSource::File(path) | SecretSource::Created(path) = source {
        let mode = fs::metadata(path)
            .map_err(|source| SecretError::Read {
                path: path.clone(),
                source,
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(SecretError::Exposed {
                path: path.clone(),
                mode: mode & 0o777,
            });
        }
    }
    let len = secret.as_bytes().len();
    if len < MIN_SERVER_SECRET_LEN {
        return Err(SecretError::TooShort {
            from: source.clone(),
            len,
        });
    }
    Ok(())
}

/// `$XDG_CONFIG_HOME/sockit/secret`, or `~/.config/sockit/secret`.
pub fn default_secret_path() -> Option<PathBuf> {
    dirs::config_dir().map(|dir| dir.join("sockit").join("secret"))
}

/// Finds the secret: `secret_file`, else `SOCKIT_SECRET`, else the default file.
/// With `create_default`, a missing default file is created (what `sockit serve` does).
pub fn resolve_secret(
    secret_file: Option<&Path>,
    create_default: bool,
) -> Result<(Secret, SecretSource), SecretError> {
    if let Some(path) = secret_file {
        return Ok((Secret::load(path)?, SecretSource::File(path.to_owned())));
    }
    if let Ok(text) = std::env::var(SECRET_ENV) {
        let secret = Secret::from_text(&text).ok_or(SecretError::Empty(SecretSource::Env))?;
        return Ok((secret, SecretSource::Env));
    }
    let Some(path) = default_secret_path() else {
        return Err(SecretError::Missing("no config directory".into()));
    };
    match Secret::load(&path) {
        Ok(secret) => Ok((secret, SecretSource::File(path))),
        Err(SecretError::Read { source, .. })
            if source.kind() == io::ErrorKind::NotFound && create_default =>
        {
            Ok((Secret::create(&path, false)?, SecretSource::Created(path)))
        }
        Err(SecretError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Err(SecretError::Missing(path.display().to_string()))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_secret_is_private_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sockit").join("secret");
        let secret = Secret::create(&path, false).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(Secret::load(&path).unwrap(), secret);
        assert!(matches!(
            Secret::create(&path, false),
            Err(SecretError::Exists(_))
        ));
        assert_ne!(Secret::create(&path, true).unwrap(), secret);
    }

    #[test]
    fn servers_refuse_short_secrets_and_files_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let secret = Secret::create(&path, false).unwrap();
        let source = SecretSource::File(path.clone());
        check_server_secret(&secret, &source).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = check_server_secret(&secret, &source).unwrap_err().to_string();
        assert!(
            error.contains(&format!("chmod 600 {}", path.display())),
            "{error}"
        );
        assert!(error.contains("644"), "{error}");
        let short = Secret::from_text("x").unwrap();
        let error = check_server_secret(&short, &SecretSource::Env)
            .unwrap_err()
            .to_string();
        assert!(error.contains("$SOCKIT_SECRET is 1 bytes"), "{error}");
        assert!(error.contains("sockit keygen"), "{error}");
        assert!(Secret::generate().as_bytes().len() >= MIN_SERVER_SECRET_LEN);
    }

    #[test]
    fn debug_output_hides_the_value() {
        let secret = Secret::from_text("hunter2hunter2").unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn whitespace_is_not_part_of_the_secret() {
        assert_eq!(Secret::from_text(" abc \n"), Secret::from_text("abc"));
        assert_eq!(Secret::from_text(" \n"), None);
    }
}
