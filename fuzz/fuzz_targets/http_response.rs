//! An HTTP response served on loopback to `sockit fetch`'s Fetcher: never panics, never reads
//! more body than sent, a complete body matches its Content-Length.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sockit::client::fuzzing::check_http_response(data));
