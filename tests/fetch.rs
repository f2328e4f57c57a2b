//! `sockit fetch` against a real HTTP server: Python's http.server (tests/support/http_server.py)
//! on an ephemeral loopback port, over plain HTTP and over HTTPS with a CA made for the test.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{sockit_command, stderr, stdout, wait_with_timeout};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

const SERVER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/http_server.py");

/// The Python test server, killed on drop. Its /files/ come from `dir/root`.
struct HttpServer {
    child: Child,
    port: u16,
    scheme: &'static str,
    dir: TempDir,
}

impl HttpServer {
    fn start() -> HttpServer {
        HttpServer::spawn(tempfile::tempdir().unwrap(), &[])
    }

    /// An HTTPS server with a certificate for 127.0.0.1 (only) made now; the PEM to
    /// trust for it is at [`HttpServer::ca_file`].
    fn start_tls(pki: Pki) -> HttpServer {
        let dir = tempfile::tempdir().unwrap();
        write_test_pki(dir.path(), pki);
        let cert = dir.path().join("server.pem");
        let key = dir.path().join("server.key");
        let args = ["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()];
        HttpServer::spawn(dir, &args)
    }

    fn spawn(dir: TempDir, extra: &[&str]) -> HttpServer {
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let mut child = Command::new("python3")
            .arg(SERVER_SCRIPT)
            .arg("--root")
            .arg(&root)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let (port_tx, port_rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = port_tx.send(line);
        });
        let line = port_rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let Ok(port) = line.trim().parse() else {
            let _ = child.kill();
            panic!("test HTTP server did not start (said {line:?})");
        };
        let scheme = if extra.is_empty() { "http" } else { "https" };
        HttpServer {
            child,
            port,
            scheme,
            dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn ca_file(&self) -> String {
        self.dir.path().join("ca.pem").to_str().unwrap().to_owned()
    }

    /// Runs `sockit fetch ARGS...` with no proxy from the environment.
    fn fetch(&self, args: &[&str]) -> Output {
        fetch_command(self.dir.path(), args).output().unwrap()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fetch_command(config_dir: &Path, args: &[&str]) -> Command {
    let mut command = sockit_command(config_dir);
    command.arg("fetch").args(args).stdin(Stdio::null());
    for proxy in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        command.env_remove(proxy);
    }
    command
}

/// How the test server's certificate is made.
#[derive(Clone, Copy)]
enum Pki {
    /// Signed by a CA of its own, whose certificate is the one to trust.
    SignedByCa,
    /// Self-signed, as a person makes one for a local server: trust the certificate itself.
    SelfSigned,
    /// Self-signed and marked as a CA, as `openssl req -x509` does by default.
    SelfSignedCa,
}

/// The server's certificate and key (server.pem, server.key) and the PEM that a client should
/// trust (ca.pem) in `dir`.
fn write_test_pki(dir: &Path, pki: Pki) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let server_key = KeyPair::generate().unwrap();
    let mut server_params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let (server_cert, ca_pem) = match pki {
        Pki::SignedByCa => {
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca_params
                .distinguished_name
                .push(DnType::CommonName, "sockit test CA");
            let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
            let cert = server_params.signed_by(&server_key, &ca).unwrap();
            (cert.pem(), ca.pem())
        }
        Pki::SelfSigned | Pki::SelfSignedCa => {
            if matches!(pki, Pki::SelfSignedCa) {
                server_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            }
            let cert = server_params.self_signed(&server_key).unwrap().pem();
            (cert.clone(), cert)
        }
    };
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.join("server.pem"), server_cert).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
}

/// Deterministic bytes that are not text: every value occurs, newlines and zeros included.
fn binary_content(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "status {:?}, stderr: {}",
        output.status,
        stderr(output)
    );
}

/// Asserts sockit failed with status `code` and one line on stderr containing `needle`.
fn assert_fails(output: &Output, code: i32, needle: &str) {
    let message = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {message}");
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    assert!(message.starts_with("sockit: "), "{message}");
    assert!(message.contains(needle), "expected {needle:?} in {message:?}");
}

/// Files left in `dir`: a failed `-o` download must leave none, partial or temporary.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn content_length_chunked_and_close_delimited_bodies() {
    let server = HttpServer::start();
    for (path, body) in [
        ("/fixed", "hello, fixed length\n"),
        ("/chunked", "hello, chunked world\n"),
        ("/close", "hello, close delimited\n"),
    ] {
        let output = server.fetch(&[&server.url(path)]);
        assert_success(&output);
        assert_eq!(stdout(&output), body, "{path}");
        assert_eq!(stderr(&output), "", "{path}");
    }
}

#[test]
fn include_shows_the_status_line_and_headers() {
    let server = HttpServer::start();
    let output = server.fetch(&["-i", &server.url("/close")]);
    assert_success(&output);
    let text = stdout(&output);
    let (head, body) = text.split_once("\r\n\r\n").expect("a blank line ends the head");
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\ncontent-type: text/plain"), "{head}");
    assert_eq!(body, "hello, close delimited\n");
}

#[test]
fn redirects_are_followed_up_to_the_limit() {
    let server = HttpServer::start();
    for hops in ["1", "5"] {
        let output = server.fetch(&[&server.url(&format!("/redirect/{hops}"))]);
        assert_success(&output);
        assert_eq!(stdout(&output), "arrived\n", "{hops} hops");
    }
    let too_many = server.fetch(&[&server.url("/redirect/6")]);
    assert_fails(&too_many, 255, "too many redirects (more than 5)");
    assert_eq!(stdout(&too_many), "");
    let raised = server.fetch(&["--max-redirs", "6", &server.url("/redirect/6")]);
    assert_success(&raised);
    assert_eq!(stdout(&raised), "arrived\n");
    let none = server.fetch(&["--max-redirs", "0", &server.url("/redirect/1")]);
    assert_fails(&none, 255, "too many redirects (more than 0)");
}

#[test]
fn include_shows_every_response_of_a_redirect_chain() {
    let server = HttpServer::start();
    let output = server.fetch(&["-i", &server.url("/redirect/2")]);
    assert_success(&output);
    let text = stdout(&output);
    let parts: Vec<&str> = text.split("\r\n\r\n").collect();
    assert_eq!(parts.len(), 4, "three heads and a body: {text}");
    assert!(parts[0].starts_with("HTTP/1.1 302 Found\r\n"), "{}", parts[0]);
    assert!(parts[0].contains("\r\nlocation: /redirect/1"), "{}", parts[0]);
    assert!(
        parts[1].starts_with("HTTP/1.1 301 Moved Permanently\r\n"),
        "{}",
        parts[1]
    );
    let absolute = format!("\r\nlocation: {}", server.url("/redirect/0"));
    assert!(parts[1].contains(&absolute), "{}", parts[1]);
    assert!(parts[2].starts_with("HTTP/1.1 200 OK\r\n"), "{}", parts[2]);
    assert_eq!(parts[3], "arrived\n");
}

#[test]
fn error_statuses_are_bodies_unless_fail_is_given() {
    let server = HttpServer::start();
    let plain = server.fetch(&[&server.url("/missing")]);
    assert_success(&plain);
    assert_eq!(stdout(&plain), "no such page\n");

    let failed = server.fetch(&["--fail", &server.url("/missing")]);
    assert_fails(&failed, 22, "HTTP 404 Not Found");
    assert_eq!(stdout(&failed), "", "--fail writes no body");

    let out = server.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let file = out.join("page");
    let to_file = server.fetch(&["--fail", "-o", file.to_str().unwrap(), &server.url("/missing")]);
    assert_fails(&to_file, 22, "HTTP 404 Not Found");
    assert!(entries(&out).is_empty(), "{:?}", entries(&out));
}

#[test]
fn a_body_cut_short_is_an_error() {
    let server = HttpServer::start();
    let truncated = server.fetch(&[&server.url("/truncated")]);
    assert_fails(&truncated, 255, "closed the connection after 10 of 100 bytes");
    let chunked = server.fetch(&[&server.url("/chunked-truncated")]);
    assert_fails(&chunked, 255, "before the last chunk");
}

#[test]
fn a_failed_download_leaves_the_output_file_as_it_was() {
    let server = HttpServer::start();
    let out = server.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let file = out.join("page.html");
    std::fs::write(&file, "the previous version\n").unwrap();
    for path in ["/truncated", "/chunked-truncated"] {
        let output = server.fetch(&["-o", file.to_str().unwrap(), &server.url(path)]);
        assert_fails(&output, 255, "closed the connection");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "the previous version\n");
        assert_eq!(entries(&out), ["page.html"], "no temporary file is left behind");
    }
    let output = server.fetch(&["-o", file.to_str().unwrap(), &server.url("/chunked")]);
    assert_success(&output);
    assert_eq!(stdout(&output), "");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello, chunked world\n");
    assert_eq!(entries(&out), ["page.html"]);
}

#[test]
fn binary_downloads_are_byte_exact() {
    let server = HttpServer::start();
    let content = binary_content(3 * 1024 * 1024 + 17);
    std::fs::write(server.root().join("big.bin"), &content).unwrap();
    let url = server.url("/files/big.bin");

    let file = server.dir.path().join("big.copy");
    let output = server.fetch(&["-o", file.to_str().unwrap(), &url]);
    assert_success(&output);
    assert_eq!(
        stderr(&output),
        "",
        "no progress bar when stderr is not a terminal"
    );
    let saved = std::fs::read(&file).unwrap();
    assert_eq!(saved.len(), content.len());
    assert_eq!(sha256(&saved), sha256(&content));

    let piped = server.fetch(&[&url]);
    assert_success(&piped);
    assert_eq!(sha256(&piped.stdout), sha256(&content), "stdout is binary-safe");
}

#[test]
fn a_reader_that_goes_away_ends_the_download_quietly() {
    let server = HttpServer::start();
    std::fs::write(server.root().join("big.bin"), binary_content(8 * 1024 * 1024)).unwrap();
    let mut child = fetch_command(server.dir.path(), &[&server.url("/files/big.bin")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0; 10];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The pipe's read end is closed now, as `| head -c 10` does.
    let status = wait_with_timeout(&mut child, Duration::from_secs(20));
    let mut errors = String::new();
    child.stderr.take().unwrap().read_to_string(&mut errors).unwrap();
    assert!(status.success(), "{status:?}: {errors}");
    assert_eq!(errors, "");
}

#[test]
fn requests_name_sockit_and_ask_for_no_compression() {
    let server = HttpServer::start();
    let output = server.fetch(&[&server.url("/headers")]);
    assert_success(&output);
    let headers = stdout(&output).to_ascii_lowercase();
    let agent = format!("user-agent: sockit/{}\n", env!("CARGO_PKG_VERSION"));
    assert!(headers.contains(&agent), "{headers}");
    assert!(!headers.contains("accept-encoding"), "{headers}");
}

#[test]
fn a_stalled_server_hits_the_read_timeout() {
    let server = HttpServer::start();
    let output = server.fetch(&["--read-timeout", "300ms", &server.url("/stall")]);
    assert_fails(&output, 255, "sent nothing for 300ms");
}

#[test]
fn connection_refused_is_one_clear_line() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let output = fetch_command(dir.path(), &[&url]).output().unwrap();
    assert_fails(
        &output,
        255,
        &format!("cannot connect to 127.0.0.1:{port}: connection refused"),
    );
}

#[test]
fn only_http_and_https_urls_are_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let output = fetch_command(dir.path(), &["ftp://127.0.0.1/file"])
        .output()
        .unwrap();
    assert_fails(&output, 255, "unsupported URL scheme `ftp`");
}

#[test]
fn https_with_the_servers_ca() {
    let server = HttpServer::start_tls(Pki::SignedByCa);
    let ca = server.ca_file();
    let output = server.fetch(&["--cacert", &ca, &server.url("/chunked")]);
    assert_success(&output);
    assert_eq!(stdout(&output), "hello, chunked world\n");

    let redirected = server.fetch(&["--cacert", &ca, &server.url("/redirect/3")]);
    assert_success(&redirected);
    assert_eq!(stdout(&redirected), "arrived\n");

    let content = binary_content(2 * 1024 * 1024 + 5);
    std::fs::write(server.root().join("big.bin"), &content).unwrap();
    let file = server.dir.path().join("big.copy");
    let saved = server.fetch(&[
        "--cacert",
        &ca,
        "-o",
        file.to_str().unwrap(),
        &server.url("/files/big.bin"),
    ]);
    assert_success(&saved);
    assert_eq!(sha256(&std::fs::read(&file).unwrap()), sha256(&content));
}

#[test]
fn https_with_a_self_signed_certificate() {
    let server = HttpServer::start_tls(Pki::SelfSigned);
    let output = server.fetch(&["-i", "--cacert", &server.ca_file(), &server.url("/fixed")]);
    assert_success(&output);
    let text = stdout(&output);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello, fixed length\n"), "{text}");
}

#[test]
fn https_without_the_ca_is_a_certificate_error() {
    for pki in [Pki::SignedByCa, Pki::SelfSigned] {
        let server = HttpServer::start_tls(pki);
        let output = server.fetch(&[&server.url("/fixed")]);
        let authority = format!("TLS with 127.0.0.1:{} failed", server.port);
        assert_fails(&output, 255, &authority);
        assert!(
            stderr(&output).contains("not signed by a trusted CA"),
            "{}",
            stderr(&output)
        );
        assert!(stderr(&output).contains("--cacert"), "{}", stderr(&output));
        assert_eq!(stdout(&output), "");
    }
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    let server = HttpServer::start_tls(Pki::SignedByCa);
    let url = server.url("/fixed").replace("127.0.0.1", "localhost");
    let output = server.fetch(&["--cacert", &server.ca_file(), &url]);
    assert_fails(&output, 255, "not valid for name");
}

#[test]
fn a_self_signed_ca_certificate_gets_a_hint() {
    let server = HttpServer::start_tls(Pki::SelfSignedCa);
    let output = server.fetch(&["--cacert", &server.ca_file(), &server.url("/fixed")]);
    assert_fails(&output, 255, "basicConstraints=critical,CA:FALSE");
}

#[test]
fn a_ca_file_without_certificates_is_refused() {
    let server = HttpServer::start_tls(Pki::SignedByCa);
    let not_pem = server.dir.path().join("server.key");
    let output = server.fetch(&["--cacert", not_pem.to_str().unwrap(), &server.url("/fixed")]);
    assert_fails(&output, 255, "no PEM certificate");
}
