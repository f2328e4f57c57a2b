//! Classic mode (`sockit serve --classic`): the course's own server programs, byte for byte
//! compatible with its Python clients, so that learners' programs work against sockit
//! unchanged.
//!
//! | port | proto | service (log name) | file |
//! |---|---|---|---|
//! | 8081 | tcp | upper echo (`classic-echo`) | `echo` |
//! | 8082 | tcp | remote exec, struct + JSON header (`classic-exec`) | `exec` |
//! | 8083 | tcp | the FTP homework's file server (`classic-ftp`) | `ftp` |
//! | 9999 | tcp | HMAC-authenticated upper echo (`classic-hmac-echo`) | `echo` |
//! | 9998 | tcp | greeting server (`classic-greeting`) | `greeting` |
//! | 9000 | udp | time: the native server's `time` service, listed, not repeated | `services::time` |
//! | 9001 | udp | upper echo of each datagram (`classic-udp-echo`) | `echo` |
//! | 9003 | udp | remote exec, stderr then stdout (`classic-udp-exec`) | `exec` |
//!
//! They keep the course's wire formats and its weaknesses (no encryption, no authentication
//! but 9999's), so they listen on loopback unless configured otherwise and the server warns
//! about each one listening. They share the native services' code (the exec runner, the file
//! root, the echo's upper-casing, the secret) and add what the course's servers lack: many
//! clients at once, limits on everything a client declares, and no client input that can stop
//! a service.

pub(crate) mod echo;
pub(crate) mod exec;
pub(crate) mod ftp;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub(crate) mod greeting;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::io::AsyncReadExt;

use crate::services::unframed::{ServiceStream, Transport};

/// Largest JSON header accepted after the course's 4-byte length.
pub(crate) const MAX_HEADER_LEN: usize = 64 * 1024;
/// Bytes read at once where the course reads `recv(1024)`: one read is one message, as in
/// the course, but a longer message is not cut in pieces.
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// The largest UDP payload over IPv4; longer replies are cut to it.
pub(crate) const MAX_DATAGRAM: usize = 65_507;

/// One classic service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClassicService {
    /// Upper-case echo (8081, `classic-echo`).
    Echo,
    /// Remote exec with the struct and JSON header (8082, `classic-exec`).
    Exec,
    /// The FTP homework's file server, over the file root (8083, `classic-ftp`).
    Ftp,
    /// HMAC-authenticated upper-case echo (9999, `classic-hmac-echo`).
    HmacEcho,
    /// Greeting server (9998, `classic-greeting`).
    Greeting,
    /// Upper-case echo of each datagram (UDP 9001, `classic-udp-echo`).
    UdpEcho,
    /// Remote exec, stderr then stdout (UDP 9003, `classic-udp-exec`).
    UdpExec,
}

impl ClassicService {
    pub(crate) const ALL: [ClassicService; 7] = [
        ClassicService::Echo,
        ClassicService::Exec,
        ClassicService::Ftp,
        ClassicService::HmacEcho,
        ClassicService::Greeting,
        ClassicService::UdpEcho,
        ClassicService::UdpExec,
    ];

    /// Its name in the config file's `[classic_listen]` table and in `--classic-listen`.
    pub(crate) fn key(self) -> &'static str {
        match self {
            ClassicService::Echo => "echo",
            ClassicService::Exec => "exec",
            ClassicService::Ftp => "ftp",
            ClassicService::HmacEcho => "hmac_echo",
            ClassicService::Greeting => "greeting",
            ClassicService::UdpEcho => "udp_echo",
            ClassicService::UdpExec => "udp_exec",
        }
    }

    /// Its name in the log (`classic-echo service on tcp 127.0.0.1:8081`).
    pub(crate) fn log_name(self) -> &'static str {
        match self {
            ClassicService::Echo => "classic-echo",
            ClassicService::Exec => "classic-exec",
            ClassicService::Ftp => "classic-ftp",
            ClassicService::HmacEcho => "classic-hmac-echo",
            ClassicService::Greeting => "classic-greeting",
            ClassicService::UdpEcho => "classic-udp-echo",
            ClassicService::UdpExec => "classic-udp-exec",
        }
    }

    /// The course's port.
    pub(crate) fn default_port(self) -> u16 {
        match self {
            ClassicService::Echo => 8081,
            ClassicService::Exec => 8082,
            ClassicService::Ftp => 8083,
            ClassicService::HmacEcho => 9999,
            ClassicService::Greeting => 9998,
            ClassicService::UdpEcho => 9001,
            ClassicService::UdpExec => 9003,
        }
    }

    pub(crate) fn default_addr(self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.default_port()))
    }

    pub(crate) fn transport(self) -> Transport {
        match self {
            ClassicService::UdpEcho | ClassicService::UdpExec => Transport::Udp,
            _ => Transport::Tcp,
        }
    }

    /// Whether it runs commands (and so needs `--allow-exec` as well).
    pub(crate) fn runs_commands(self) -> bool {
        matches!(self, ClassicService::Exec | ClassicService::UdpExec)
    }

    /// What anyone who can reach it may do, for the warning `serve` logs; `None` for the
    /// HMAC-authenticated echo.
    pub(crate) fn exposure(self) -> Option<&'static str> {
        match self {
            ClassicService::Exec | ClassicService::UdpExec => {
                Some("runs any command it is sent, as this user")
            }
            ClassicService::Ftp => Some("stores and hands out files of the file root"),
            ClassicService::Echo | ClassicService::UdpEcho | ClassicService::Greeting => {
                Some("answers anyone")
            }
            ClassicService::HmacEcho => None,
        }
    }

    pub(crate) fn from_key(key: &str) -> Option<ClassicService> {
        ClassicService::ALL
            .into_iter()
            .find(|service| service.key() == key)
    }
}

impl fmt::Display for ClassicService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.log_name())
    }
}

fn unknown_service(key: &str) -> String {
    let known: Vec<_> = ClassicService::ALL.iter().map(|service| service.key()).collect();
    format!("no classic service `{key}` (there are {})", known.join(", "))
}

impl<'de> Deserialize<'de> for ClassicService {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ClassicService, D::Error> {
        let key = String::deserialize(deserializer)?;
        ClassicService::from_key(&key).ok_or_else(|| serde::de::Error::custom(unknown_service(&key)))
    }
}

/// Classic mode's settings.
#[derive(Clone, Debug, Default)]
pub struct ClassicConfig {
    /// `--classic`: every classic service on its course port, unless `listen` says otherwise.
    pub enabled: bool,
    /// Addresses set one by one (`None`: off), from the config file and `--classic-listen`.
    /// A service set here listens even without `--classic`.
    pub listen: BTreeMap<ClassicService, Option<SocketAddr>>,
    /// Let the UDP remote exec answer sources other than loopback.
    pub exec_any_source: bool,
}

impl ClassicConfig {
    /// Where `service` listens, if at all.
    pub(crate) fn addr(&self, service: ClassicService) -> Option<SocketAddr> {
        match self.listen.get(&service) {
            Some(addr) => *addr,
            None => self.enabled.then(|| service.default_addr()),
        }
    }
}

/// `NAME=ADDR` or `NAME=off`: one classic service's address, as `--classic-listen` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassicListen {
    /// Which service.
    pub service: ClassicService,
    /// Where it listens; `None` turns it off.
    pub addr: Option<SocketAddr>,
}

impl FromStr for ClassicListen {
    type Err = String;

    fn from_str(text: &str) -> Result<ClassicListen, String> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}` is not NAME=ADDR (echo=127.0.0.1:8081, exec=off)"))?;
        let service = ClassicService::from_key(key).ok_or_else(|| unknown_service(key))?;
        let addr = match value {
            "off" => None,
            addr => Some(
                addr.parse()
                    .map_err(|_| format!("`{addr}` is not IP:PORT (127.0.0.1:8081, [::1]:8081) nor `off`"))?,
            ),
        };
        Ok(ClassicListen { service, addr })
    }
}

/// Whether a source counts as this machine: loopback, also as an IPv4-mapped IPv6 address.
pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Why a course-style header was not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("header length {0} is not between 1 and {MAX_HEADER_LEN}")]
    Length(i32),
    #[error("the client left in the middle of a header")]
    Vanished,
    #[error("header is not the expected JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Io(io::Error),
}

impl From<io::Error> for HeaderError {
    fn from(error: io::Error) -> HeaderError {
        match error.kind() {
            io::ErrorKind::UnexpectedEof => HeaderError::Vanished,
            _ => HeaderError::Io(error),
        }
    }
}

/// Reads the course's header: `struct.pack('i', len)` (4 bytes, little-endian, signed) and
/// `len` bytes of JSON. The length is checked before anything is allocated for it. `Ok(None)`
/// when the client closed (or the server is stopping) before a new header began.
pub(crate) async fn read_header<T: DeserializeOwned>(
    stream: &mut ServiceStream,
) -> Result<Option<T>, HeaderError> {
    let mut prefix = [0u8; 4];
    let mut unread = prefix.as_mut_slice();
    if stream.read_request(&mut unread).await? == 0 {
        return Ok(None);
    }
    stream.read_exact(unread).await?;
    let declared = i32::from_le_bytes(prefix);
    let len = usize::try_from(declared)
        .ok()
        .filter(|len| (1..=MAX_HEADER_LEN).contains(len))
        .ok_or(HeaderError::Length(declared))?;
    let mut header = vec![0; len];
    stream.read_exact(&mut header).await?;
    Ok(Some(serde_json::from_slice(&header)?))
}

/// The course's header for `fields`: `struct.pack('i', len(header))` followed by the JSON
/// exactly as Python's `json.dumps` writes it.
/// An error only for a header too long for the prefix or one that does not serialize.
pub(crate) fn header_bytes(fields: &impl Serialize) -> io::Result<Vec<u8>> {
    let json = python_json(fields)?;
    let len = i32::try_from(json.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "header too long for its length prefix",
        )
    })?;
    let mut bytes = len.to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    Ok(bytes)
}

/// JSON as Python's `json.dumps` writes it by default: `", "` and `": "` separators and every
/// character outside printable ASCII escaped as `\uXXXX` (`ensure_ascii`).
pub(crate) fn python_json(value: &impl Serialize) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value.serialize(&mut serializer)?;
    Ok(out)
}

struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn begin_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        for c in fragment.chars() {
            if (' '..'\x7f').contains(&c) {
                writer.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// Bytes as they may appear in a log line: lossy UTF-8, control characters escaped, at most
/// 200 characters.
pub(crate) fn shown(bytes: &[u8]) -> String {
    crate::text::escape_at_most(&String::from_utf8_lossy(bytes), 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_written_as_python_writes_it() {
        #[derive(Serialize)]
        struct Header<'a> {
            cmd: &'a str,
            filename: &'a str,
            filesize: u64,
        }
        let header = Header {
            cmd: "get",
            filename: "文件 a\"b\\\n\x7f😀.txt",
            filesize: 12,
        };
        // json.dumps({'cmd': 'get', 'filename': '文件 a"b\\\n\x7f😀.txt', 'filesize': 12})
        let python =
            r#"{"cmd": "get", "filename": "\u6587\u4ef6 a\"b\\\n\u007f\ud83d\ude00.txt", "filesize": 12}"#;
        assert_eq!(String::from_utf8(python_json(&header).unwrap()).unwrap(), python);
        let framed = header_bytes(&header).unwrap();
        assert_eq!(framed[..4], (python.len() as i32).to_le_bytes());
        assert_eq!(&framed[4..], python.as_bytes());
        assert_eq!(python_json(&[1, 2]).unwrap(), b"[1, 2]");
    }

    #[test]
    fn addresses_come_from_overrides_then_classic_mode() {
        let mut config = ClassicConfig::default();
        assert_eq!(config.addr(ClassicService::Echo), None);
        config.enabled = true;
        assert_eq!(
            config.addr(ClassicService::Echo),
            Some("127.0.0.1:8081".parse().unwrap())
        );
        let off: ClassicListen = "exec=off".parse().unwrap();
        let moved: ClassicListen = "udp_echo=[::1]:0".parse().unwrap();
        for listen in [off, moved] {
            config.listen.insert(listen.service, listen.addr);
        }
        assert_eq!(config.addr(ClassicService::Exec), None);
        assert_eq!(
            config.addr(ClassicService::UdpEcho),
            Some("[::1]:0".parse().unwrap())
        );
        assert!("nope=127.0.0.1:1".parse::<ClassicListen>().is_err());
        assert!("echo=8081".parse::<ClassicListen>().is_err());
        assert!("echo".parse::<ClassicListen>().is_err());
    }

    #[test]
    fn loopback_includes_mapped_addresses() {
        assert!(is_loopback("127.0.0.2".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("192.0.2.1".parse().unwrap()));
        assert!(!is_loopback("::ffff:192.0.2.1".parse().unwrap()));
    }
}
