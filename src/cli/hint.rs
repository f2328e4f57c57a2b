//! How the command line words the library's errors: with the flags and commands that fix them.
//!
//! The library's errors name no flag (a program using it has none): each cause a fix exists
//! for is a variant of its own. Here, and only here, they become what a user at the `sockit`
//! prompt can act on: `--force`, `--plaintext`, `--secret-file`, `sockit keygen`.

use std::error::Error;

use sockit::ClientError;
use sockit::auth::{HandshakeError, SECRET_ENV, SecretError};
use sockit::fetch::FetchError;
use sockit::proto::files::EXISTS_NOTE;
use sockit::wire::ErrorCode;

/// The error and its causes on one line, with a hint when sockit knows one.
pub fn one_line(error: &anyhow::Error) -> String {
    let line = match error.downcast_ref::<ClientError>() {
        // A client error's message already includes its cause.
        Some(client_error) => match hint(client_error) {
            Some(hint) => format!("{} (hint: {hint})", describe(client_error)),
            None => describe(client_error),
        },
        // Each cause after the one it explains, as anyhow's `{:#}` shows them.
        None => error.chain().map(worded).collect::<Vec<_>>().join(": "),
    };
    line.replace('\n', " ")
}

/// A client error as the command line says it: naming the flag that fixes it, where one does.
/// Every command that shows a client error shows it so.
pub fn describe(error: &ClientError) -> String {
    match error {
        // The code says it all; a server's own words for it name no flag.
        ClientError::Handshake(HandshakeError::Refused(refusal)) => match refusal.code {
            ErrorCode::PlaintextRefused => format!(
                "this server requires encrypted sessions; connect without --plaintext ({})",
                refusal.code
            ),
            ErrorCode::EncryptionUnavailable => format!(
                "this server runs with --plaintext; connect with --plaintext ({})",
                refusal.code
            ),
            _ => error.to_string(),
        },
        ClientError::LocalExists(_) => format!("{error} (use --force to replace it)"),
        ClientError::Remote(refusal) if refusal.code == ErrorCode::Exists => error
            .to_string()
            .replace(EXISTS_NOTE, "(use --force to replace it)"),
        _ => error.to_string(),
    }
}

/// What to try next after a client error, when sockit knows.
fn hint(error: &ClientError) -> Option<&'static str> {
    Some(match error {
        ClientError::Refused(_) => "is `sockit serve` running there, on that port?",
        ClientError::Unreachable { .. } | ClientError::Timeout(_) | ClientError::Resolve { .. } => {
            "check the host name, the port, and the network in between"
        }
        ClientError::NoAnswer { .. } => {
            "check the host, the port, and that the service is on there; firewalls often drop UDP"
        }
        ClientError::Handshake(HandshakeError::AuthFailed(_)) => {
            "both sides must use the same secret: check --secret-file and SOCKIT_SECRET"
        }
        ClientError::Handshake(HandshakeError::Refused(e)) => match e.code {
            ErrorCode::PlaintextRefused => "drop --plaintext, or start the server with --plaintext",
            ErrorCode::EncryptionUnavailable => "add --plaintext, or restart the server without it",
            ErrorCode::VersionMismatch => "use the same sockit version on both sides",
            ErrorCode::AuthThrottled => {
                "recent failed attempts from this address: wait, and check that both sides use the same secret"
            }
            _ => return None,
        },
        ClientError::Handshake(HandshakeError::Closed) => {
            "the server may be at its connection limit, or not a sockit server"
        }
        _ => return None,
    })
}

/// One cause of an error that is not a client call's, with the command line's fix.
fn worded(cause: &(dyn Error + 'static)) -> String {
    if let Some(error) = cause.downcast_ref::<SecretError>() {
        return match error {
            SecretError::Exists(_) => format!("{error} (use --force to replace it)"),
            SecretError::Missing(looked_for) => format!(
                "no secret: pass --secret-file, set {SECRET_ENV}, or run `sockit keygen` \
                 (looked for {looked_for})"
            ),
            _ => error.to_string(),
        };
    }
    match cause.downcast_ref::<FetchError>() {
        Some(error @ FetchError::UntrustedCertificate { .. }) => {
            format!("{error} (hint: --cacert FILE trusts a private CA or a self-signed certificate)")
        }
        _ => cause.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use sockit::wire::RemoteError;

    use super::*;

    #[test]
    fn a_refused_mode_names_the_flag_whatever_the_server_said() {
        let refusal = RemoteError::new(ErrorCode::PlaintextRefused, "words of another server");
        let error = anyhow::Error::from(ClientError::Handshake(HandshakeError::Refused(refusal)));
        assert_eq!(
            one_line(&error),
            "this server requires encrypted sessions; connect without --plaintext (plaintext_refused) \
             (hint: drop --plaintext, or start the server with --plaintext)"
        );
    }

    #[test]
    fn a_download_over_a_local_file_names_the_flag() {
        let error = ClientError::LocalExists(PathBuf::from("./f"));
        assert_eq!(describe(&error), "./f exists (use --force to replace it)");
    }

    #[test]
    fn a_secret_error_under_context_still_gets_its_flag() {
        let error =
            anyhow::Error::from(SecretError::Exists(PathBuf::from("/k"))).context("cannot make a secret");
        assert_eq!(
            one_line(&error),
            "cannot make a secret: secret file /k already exists (use --force to replace it)"
        );
    }
}
