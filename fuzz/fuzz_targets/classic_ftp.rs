//! The FTP homework's file server: nothing written outside the root, no partial file left,
//! no link followed out, every `get` reply whole and as long as its header says.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sockit::services::classic::fuzzing::check_classic_ftp(data));
