//! HTTP(S) GET for `sockit fetch`: the course's raw-socket HTTP client, done right.
//!
//! ureq speaks HTTP/1.1 (Content-Length, chunked and close-delimited bodies) over rustls with
//! Mozilla's roots, or only the CAs of a PEM file. Redirects are followed here, one request at
//! a time, so that every response of a chain can be shown; and ureq's errors are turned into
//! the sentence a person needs ("cannot connect to host:port: connection refused").

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ureq::http::{StatusCode, Version};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::{Agent, BodyReader, Timeout};
use url::Url;

mod error;

pub use error::FetchError;
use error::{explain_io, tls_error};

/// Sent as `User-Agent` on every request.
pub const USER_AGENT: &str = concat!("sockit/", env!("CARGO_PKG_VERSION"));

/// How [`Fetcher`] connects, waits and follows redirects.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Redirects followed before giving up.
    pub max_redirects: u32,
    /// Limit on resolving the host, connecting and the TLS handshake, for each request.
    pub connect_timeout: Duration,
    /// Limit on each wait for data: a stalled server fails, a slow one does not.
    pub read_timeout: Duration,
    /// PEM file whose certificates are the only trusted roots (as curl's `--cacert`).
    pub ca_file: Option<PathBuf>,
}

impl Default for FetchOptions {
    fn default() -> FetchOptions {
        FetchOptions {
            max_redirects: 5,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            ca_file: None,
        }
    }
}

/// Status line and headers of one response.
#[derive(Clone, Debug)]
pub struct ResponseHead {
    /// The URL that was asked for (after earlier redirects).
    pub url: Url,
    /// HTTP/1.1, or HTTP/1.0 from an old server.
    pub version: Version,
    /// The status code; a redirect's head is passed on before it is followed.
    pub status: StatusCode,
    /// Names in lower case, as HTTP/2 writes them; values as sent, in the order received.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ResponseHead {
    fn new(url: &Url, response: &ureq::http::Response<ureq::Body>) -> ResponseHead {
        ResponseHead {
            url: url.clone(),
            version: response.version(),
            status: response.status(),
            headers: response
                .headers()
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_owned()))
                .collect(),
        }
    }

    /// `HTTP/1.1 404 Not Found`. The reason is the standard one for the code: the server's own
    /// wording is not kept by the HTTP library.
    pub fn status_line(&self) -> String {
        let reason = self.status.canonical_reason().unwrap_or("");
        format!("{:?} {} {reason}", self.version, self.status.as_u16())
            .trim_end()
            .to_owned()
    }

    /// The first value of header `name` (lower case), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        let (_, value) = self.headers.iter().find(|(n, _)| n == name)?;
        std::str::from_utf8(value).ok()
    }

    /// The body's announced length; `None` for chunked and close-delimited bodies.
    pub fn content_length(&self) -> Option<u64> {
        if self.is_chunked() {
            return None;
        }
        self.header("content-length")?.trim().parse().ok()
    }

    fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|codings| codings.to_ascii_lowercase().contains("chunked"))
    }

    /// Where a redirect points, resolved against this response's URL.
    fn redirect_target(&self) -> Result<Option<Url>, FetchError> {
        let redirect = [301, 302, 303, 307, 308].contains(&self.status.as_u16());
        let Some(location) = self.header("location").filter(|_| redirect) else {
            return Ok(None);
        };
        let bad = |reason: String| FetchError::BadRedirect {
            location: location.to_owned(),
            reason,
        };
        let target = self.url.join(location).map_err(|e| bad(e.to_string()))?;
        check_scheme(&target).map_err(|e| bad(e.to_string()))?;
        Ok(Some(target))
    }
}

/// Makes GET requests with one configuration; cheap to reuse for several URLs.
pub struct Fetcher {
    agent: Agent,
    options: FetchOptions,
}

impl Fetcher {
    /// Fails only on an unreadable `ca_file`: no connection is made before [`Fetcher::get`].
    pub fn new(options: FetchOptions) -> Result<Fetcher, FetchError> {
        let roots = match &options.ca_file {
            Some(path) => RootCerts::from(load_ca_file(path)?),
            None => RootCerts::WebPki,
        };
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(USER_AGENT)
            .timeout_resolve(Some(options.connect_timeout))
            .timeout_connect(Some(options.connect_timeout))
            .timeout_per_read(Some(options.read_timeout))
            .timeout_per_write(Some(options.read_timeout))
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .build();
        Ok(Fetcher {
            agent: config.new_agent(),
            options,
        })
    }

    /// GETs `url`, following redirects. `on_response` sees every response head in order, the
    /// redirects' included, before the final one's body is read.
    pub fn get(&self, url: &str, mut on_response: impl FnMut(&ResponseHead)) -> Result<Download, FetchError> {
        let mut url = parse_url(url)?;
        let mut redirects = 0;
        loop {
            let response = self
                .agent
                .get(url.as_str())
                .call()
                .map_err(|error| self.explain(error, &url))?;
            let head = ResponseHead::new(&url, &response);
            on_response(&head);
            let Some(next) = head.redirect_target()? else {
                return Ok(Download {
                    authority: authority(&url),
                    read_timeout: self.options.read_timeout,
                    received: 0,
                    body: response.into_body().into_reader(),
                    head,
                });
            };
            if redirects == self.options.max_redirects {
                return Err(FetchError::TooManyRedirects(redirects));
            }
            redirects += 1;
            url = next;
        }
    }

    /// Names what went wrong while asking `url` for its response head.
    fn explain(&self, error: ureq::Error, url: &Url) -> FetchError {
        let authority = authority(url);
        match error {
            ureq::Error::Io(io) => explain_io(io, url),
            ureq::Error::HostNotFound => FetchError::Resolve {
                host: host(url),
                reason: "no address found".to_owned(),
            },
            ureq::Error::Timeout(Timeout::Resolve | Timeout::Connect) => FetchError::ConnectTimeout {
                authority,
                after: self.options.connect_timeout,
            },
            ureq::Error::Timeout(_) => FetchError::ReadTimeout {
                authority,
                after: self.options.read_timeout,
            },
            ureq::Error::Rustls(tls) => tls_error(authority, &tls),
            ureq::Error::Tls(reason) => FetchError::Tls {
                authority,
                reason: reason.to_owned(),
            },
            ureq::Error::ConnectionFailed => FetchError::Connect {
                authority,
                reason: "no address answered".to_owned(),
            },
            other => FetchError::Protocol {
                authority,
                reason: other.to_string(),
            },
        }
    }
}

/// The final response of a [`Fetcher::get`]: its head and a body to read to the end.
pub struct Download {
    /// The final response's head, after every redirect.
    pub head: ResponseHead,
    body: BodyReader<'static>,
    authority: String,
    read_timeout: Duration,
    received: u64,
}

impl Download {
    /// Reads the next piece of the body. `Ok(0)` means the whole body has arrived: a body cut
    /// short (fewer bytes than Content-Length, no last chunk) is an error, never an early end.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, FetchError> {
        match self.body.read(buf) {
            Ok(n) => {
                self.received += n as u64;
                Ok(n)
            }
            Err(error) => Err(self.explain(ureq::Error::from(error))),
        }
    }

    /// Body bytes read so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    fn explain(&self, error: ureq::Error) -> FetchError {
        let authority = self.authority.clone();
        match error {
            ureq::Error::Timeout(_) => FetchError::ReadTimeout {
                authority,
                after: self.read_timeout,
            },
            ureq::Error::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => FetchError::Truncated {
                authority,
                detail: self.shortfall(),
            },
            other => FetchError::Protocol {
                authority,
                reason: other.to_string(),
            },
        }
    }

    fn shortfall(&self) -> String {
        match (self.head.content_length(), self.head.is_chunked()) {
            (Some(expected), _) => format!("after {} of {expected} bytes", self.received),
            (None, true) => format!("before the last chunk ({} bytes received)", self.received),
            (None, false) => format!("after {} bytes", self.received),
        }
    }
}

/// Parses a URL given by a person: http or https, with a host.
pub fn parse_url(text: &str) -> Result<Url, FetchError> {
    let invalid = |reason: String| FetchError::InvalidUrl {
        url: text.to_owned(),
        reason,
    };
    let url = Url::parse(text).map_err(|e| invalid(e.to_string()))?;
    check_scheme(&url)?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".to_owned()));
    }
    Ok(url)
}

fn check_scheme(url: &Url) -> Result<(), FetchError> {
    match url.scheme() {
        "http" | "https" => Ok(()),
        other => Err(FetchError::UnsupportedScheme(other.to_owned())),
    }
}

fn host(url: &Url) -> String {
    url.host_str().unwrap_or_default().to_owned()
}

/// `host:port` as errors show it, the port always spelled out.
fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// The certificates of a PEM file; an empty or unreadable file is an error, not "trust nothing".
fn load_ca_file(path: &Path) -> Result<Vec<Certificate<'static>>, FetchError> {
    let fail = |reason: String| FetchError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(certificate) = item.map_err(|e| fail(e.to_string()))? {
            certificates.push(certificate);
        }
    }
    if certificates.is_empty() {
        return Err(fail("no PEM certificate in it".to_owned()));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, location: Option<&str>) -> ResponseHead {
        ResponseHead {
            url: Url::parse("http://example.com:8080/a/b?q=1").unwrap(),
            version: Version::HTTP_11,
            status: StatusCode::from_u16(status).unwrap(),
            headers: location
                .map(|l| ("location".to_owned(), l.as_bytes().to_owned()))
                .into_iter()
                .collect(),
        }
    }

    fn target(status: u16, location: &str) -> String {
        head(status, Some(location))
            .redirect_target()
            .unwrap()
            .unwrap()
            .to_string()
    }

    #[test]
    fn redirects_resolve_against_the_current_url() {
        assert_eq!(target(301, "/c"), "http://example.com:8080/c");
        assert_eq!(target(302, "c"), "http://example.com:8080/a/c");
        assert_eq!(target(307, "../c"), "http://example.com:8080/c");
        assert_eq!(target(308, "//other.example/x"), "http://other.example/x");
        assert_eq!(target(303, "https://secure.example/"), "https://secure.example/");
    }

    #[test]
    fn only_redirect_statuses_with_a_location_redirect() {
        assert!(head(200, Some("/elsewhere")).redirect_target().unwrap().is_none());
        assert!(head(304, Some("/elsewhere")).redirect_target().unwrap().is_none());
        assert!(head(302, None).redirect_target().unwrap().is_none());
    }

    #[test]
    fn redirects_to_other_schemes_are_refused() {
        let error = head(302, Some("ftp://example.com/file"))
            .redirect_target()
            .unwrap_err();
        assert!(matches!(error, FetchError::BadRedirect { .. }), "{error}");
    }

    #[test]
    fn urls_must_be_http_or_https_with_a_host() {
        assert!(parse_url("https://example.com").is_ok());
        assert!(matches!(
            parse_url("ftp://example.com/"),
            Err(FetchError::UnsupportedScheme(s)) if s == "ftp"
        ));
        assert!(matches!(
            parse_url("example.com/page"),
            Err(FetchError::InvalidUrl { .. })
        ));
        assert!(matches!(parse_url("http://"), Err(FetchError::InvalidUrl { .. })));
    }

    #[test]
    fn status_lines_use_the_standard_reason() {
        assert_eq!(head(404, None).status_line(), "HTTP/1.1 404 Not Found");
        assert_eq!(head(299, None).status_line(), "HTTP/1.1 299");
    }

    #[test]
    fn chunked_bodies_have_no_length() {
        let mut head = head(200, None);
        head.headers.push(("content-length".to_owned(), b"12".to_vec()));
        assert_eq!(head.content_length(), Some(12));
        head.headers
            .insert(0, ("transfer-encoding".to_owned(), b"chunked".to_vec()));
        assert_eq!(head.content_length(), None);
    }
}
