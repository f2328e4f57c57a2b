//! Why a fetch failed, in words: ureq hands DNS, connection and TLS failures on as I/O
//! errors, and `sockit fetch` prints one line that must say which it was.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::{authority, host};

/// Why a fetch failed, each phrased for the one line `sockit` prints.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs, reason = "each variant's #[error] text says what it means")]
pub enum FetchError {
    #[error("invalid URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("unsupported URL scheme `{0}` (only http and https)")]
    UnsupportedScheme(String),
    #[error("cannot use CA file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    #[error("cannot resolve host {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot connect to {authority}: {reason}")]
    Connect { authority: String, reason: String },
    #[error("connection to {authority} failed: {reason}")]
    Connection { authority: String, reason: String },
    #[error("TLS with {authority} failed: {reason}")]
    Tls { authority: String, reason: String },
    /// The server's certificate chain ends at no root [`FetchOptions`](super::FetchOptions)
    /// trusts: a private CA or a self-signed certificate that was not given as a trusted root.
    #[error("TLS with {authority} failed: the certificate is not signed by a trusted CA")]
    UntrustedCertificate { authority: String },
    #[error("timed out connecting to {authority} (after {after:?})")]
    ConnectTimeout { authority: String, after: Duration },
    #[error("{authority} sent nothing for {after:?}")]
    ReadTimeout { authority: String, after: Duration },
    #[error("too many redirects (more than {0})")]
    TooManyRedirects(u32),
    #[error("bad redirect Location `{location}`: {reason}")]
    BadRedirect { location: String, reason: String },
    #[error("{authority} closed the connection {detail}: the body is incomplete")]
    Truncated { authority: String, detail: String },
    #[error("bad response from {authority}: {reason}")]
    Protocol { authority: String, reason: String },
}

/// ureq passes DNS, connection and TLS handshake failures on as I/O errors: tell them apart.
pub(super) fn explain_io(io: io::Error, url: &Url) -> FetchError {
    let authority = authority(url);
    if let Some(reason) = lookup_failure(&io) {
        return FetchError::Resolve {
            host: host(url),
            reason,
        };
    }
    if let Some(tls) = tls_failure(&io) {
        return tls_error(authority, tls);
    }
    match io.kind() {
        io::ErrorKind::UnexpectedEof => FetchError::Protocol {
            authority,
            reason: "connection closed before a complete response".to_owned(),
        },
        kind if is_connect_failure(kind) => FetchError::Connect {
            authority,
            reason: io_reason(&io),
        },
        _ => FetchError::Connection {
            authority,
            reason: io_reason(&io),
        },
    }
}

/// rustls reports a failed handshake (unknown issuer, wrong name) as an I/O error that wraps
/// its own error.
fn tls_failure(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A failed TLS handshake: an untrusted certificate on its own, as the caller may know how to
/// trust it; otherwise rustls's words, with a hint for a CA certificate used as a server's.
pub(super) fn tls_error(authority: String, error: &rustls::Error) -> FetchError {
    use rustls::{CertificateError, Error};
    let reason = match error {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            return FetchError::UntrustedCertificate { authority };
        }
        // webpki refuses a certificate marked as a CA (`openssl req -x509`'s default) as a
        // server's own, even when it is the trusted one itself.
        Error::InvalidCertificate(CertificateError::Other(other))
            if other.to_string().contains("CaUsedAsEndEntity") =>
        {
            "the server's certificate is a CA certificate (basicConstraints CA:TRUE), which \
             cannot name a server (hint: make it with basicConstraints=critical,CA:FALSE)"
                .to_owned()
        }
        other => other.to_string(),
    };
    FetchError::Tls { authority, reason }
}

/// The resolver's reason when `error` is a failed DNS lookup. ureq passes on the standard
/// library's error, which carries no OS error code and names itself only in its message.
fn lookup_failure(error: &io::Error) -> Option<String> {
    const PREFIX: &str = "failed to lookup address information";
    if error.raw_os_error().is_some() {
        return None;
    }
    let message = error.to_string();
    let reason = message.strip_prefix(PREFIX)?;
    Some(reason.trim_start_matches([':', ' ']).to_owned())
}

/// Errors that mean no connection was made, as opposed to one that broke.
fn is_connect_failure(kind: io::ErrorKind) -> bool {
    use io::ErrorKind::*;
    matches!(
        kind,
        ConnectionRefused | HostUnreachable | NetworkUnreachable | TimedOut | AddrNotAvailable
    )
}

/// "connection refused" rather than "Connection refused (os error 111)".
fn io_reason(error: &io::Error) -> String {
    use io::ErrorKind::*;
    match error.kind() {
        ConnectionRefused => "connection refused".to_owned(),
        ConnectionReset => "connection reset".to_owned(),
        HostUnreachable => "host unreachable".to_owned(),
        NetworkUnreachable => "network unreachable".to_owned(),
        TimedOut => "timed out".to_owned(),
        _ => error.to_string(),
    }
}
