//! The check run by the `http_response` fuzz target (fuzz/) and by the test that replays its
//! corpus, kept in the library so both run exactly the same code.
//!
//! `sockit fetch` leaves HTTP parsing to ureq; what it reads itself from a response is the
//! Location of a redirect, Content-Length and Transfer-Encoding (to explain a cut body), and
//! the status. So the whole path is fuzzed as it runs: a [`Fetcher`] GETs from a server on
//! loopback in this process that answers every connection with the fuzz input and closes.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::fetch::{FetchError, FetchOptions, Fetcher};

/// GETs `http://127.0.0.1:PORT/` from a server whose response is `data`, following no
/// redirect (a Location is still resolved and checked), and reads the body to its end: never
/// panics, never reads more body than was sent, and a complete body with a Content-Length
/// has exactly that length.
pub fn check_http_response(data: &[u8]) {
    let server = LoopbackServer::get();
    *server.response.lock().expect("response lock") = data.to_vec();
    let options = FetchOptions {
        max_redirects: 0,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
        ca_file: None,
    };
    let fetcher = Fetcher::new(options).expect("no CA file to read");
    let mut heads = 0;
    let url = format!("http://{}/", server.addr);
    let mut download = match fetcher.get(&url, |_| heads += 1) {
        Ok(download) => download,
        Err(FetchError::InvalidUrl { .. } | FetchError::UnsupportedScheme(_)) => {
            panic!("the loopback URL was refused")
        }
        Err(_) => return,
    };
    assert_eq!(heads, 1, "one response head seen");
    let mut buf = [0; 4096];
    // Each successful read takes at least one byte of `data`.
    for _ in 0..=data.len() + 1 {
        match download.read(&mut buf) {
            Ok(0) => return check_complete(&download),
            Ok(_) => assert!(download.received() <= data.len() as u64, "more body than sent"),
            Err(_) => return,
        }
    }
    panic!("the body never ended");
}

/// A body read to its end has the announced length, where the status allows a body.
fn check_complete(download: &crate::fetch::Download) {
    let status = download.head.status.as_u16();
    let bodiless = status < 200 || status == 204 || status == 304;
    if let (Some(length), false) = (download.head.content_length(), bodiless) {
        assert_eq!(
            download.received(),
            length,
            "body length differs from Content-Length"
        );
    }
}

/// A server on 127.0.0.1 answering each connection, one at a time, with `response`.
struct LoopbackServer {
    addr: SocketAddr,
    response: Arc<Mutex<Vec<u8>>>,
}

impl LoopbackServer {
    fn get() -> &'static LoopbackServer {
        static SERVER: OnceLock<LoopbackServer> = OnceLock::new();
        SERVER.get_or_init(|| {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
            let addr = listener.local_addr().expect("a bound address");
            let response = Arc::new(Mutex::new(Vec::new()));
            let shared = response.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().flatten() {
                    let response = shared.lock().expect("response lock").clone();
                    let _ = answer(stream, &response);
                }
            });
            LoopbackServer { addr, response }
        })
    }
}

/// Reads the request's head (so closing sends no reset), writes `response` and closes.
fn answer(mut stream: TcpStream, response: &[u8]) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = Vec::new();
    let mut buf = [0; 1024];
    while !request.ends_with(b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    stream.write_all(response)?;
    stream.shutdown(Shutdown::Write)
}
