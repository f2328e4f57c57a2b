//! Where the two sides meet when nobody says otherwise: the default ports, and how an address
//! names a Unix socket. Servers listen and clients dial by the same rules, so both read them here.

use std::path::PathBuf;

/// The port sockit serves and clients dial when none is given.
pub const DEFAULT_PORT: u16 = 8080;
/// The course's time server port (UDP), where `sockit time` asks when given none.
pub const DEFAULT_TIME_PORT: u16 = 9000;

/// `unix:PATH`, or anything with a slash, names a Unix socket (for servers and clients alike).
pub fn unix_socket_path(text: &str) -> Option<PathBuf> {
    match text.strip_prefix("unix:") {
        Some(path) => Some(path.into()),
        None => text.contains('/').then(|| text.into()),
    }
}
