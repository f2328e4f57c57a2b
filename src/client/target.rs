//! Where a client connects: `HOST[:PORT]`, `[V6]:PORT`, a bare IPv6 address, or a Unix path.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use crate::proto::ports::{DEFAULT_PORT, unix_socket_path};

/// Where a server listens, as the commands' `HOST[:PORT]` or a Unix socket path names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A host name or address, resolved on each connect.
    Tcp {
        /// Name or address, without brackets.
        host: String,
        /// The port, [`DEFAULT_PORT`] when none was given.
        port: u16,
    },
    /// A Unix socket on this machine.
    Unix(PathBuf),
}

impl Target {
    /// The addresses to try, in the resolver's order; a Unix target has none.
    pub async fn resolve(&self) -> io::Result<Vec<SocketAddr>> {
        match self {
            Target::Tcp { host, port } => {
                Ok(tokio::net::lookup_host((host.as_str(), *port)).await?.collect())
            }
            Target::Unix(_) => Ok(Vec::new()),
        }
    }
}

impl FromStr for Target {
    type Err = String;

    /// A target with port [`DEFAULT_PORT`] when none is given.
    fn from_str(text: &str) -> Result<Target, String> {
        Target::parse_with_port(text, DEFAULT_PORT)
    }
}

impl Target {
    /// Parses `text`, with `default_port` when it names none.
    pub fn parse_with_port(text: &str, default_port: u16) -> Result<Target, String> {
        if let Some(path) = unix_socket_path(text) {
            return Ok(Target::Unix(path));
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(tcp(addr.ip().to_string(), addr.port()));
        }
        if let Ok(ip) = text.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(tcp(ip.to_string(), default_port));
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((host, port)) => {
                let port = port
                    .parse()
                    .map_err(|_| format!("`{port}` in `{text}` is not a port number"))?;
                (host, port)
            }
            None => (text, default_port),
        };
        if host.is_empty() {
            return Err(format!("`{text}` names no host (try 127.0.0.1:{default_port})"));
        }
        Ok(tcp(host.to_owned(), port))
    }
}

fn tcp(host: String, port: u16) -> Target {
    Target::Tcp { host, port }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_target_form() {
        let cases = [
            ("example.com", "example.com:8080"),
            ("example.com:9", "example.com:9"),
            ("127.0.0.1", "127.0.0.1:8080"),
            ("[::1]:7", "[::1]:7"),
            ("::1", "[::1]:8080"),
            ("/run/sockit.sock", "unix:/run/sockit.sock"),
        ];
        for (text, shown) in cases {
            assert_eq!(text.parse::<Target>().unwrap().to_string(), shown);
        }
        assert!("host:notaport".parse::<Target>().is_err());
        assert!(":80".parse::<Target>().is_err());
        let time = Target::parse_with_port("localhost", 9000).unwrap();
        assert_eq!(time.to_string(), "localhost:9000");
        assert_eq!(
            Target::parse_with_port("[::1]:7", 9000).unwrap().to_string(),
            "[::1]:7"
        );
    }
}
