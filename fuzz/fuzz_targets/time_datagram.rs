//! A datagram to the UDP time services (the course's strftime server, SNTP): never panics,
//! replies stay within their caps, SNTP answers client requests only.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sockit::services::fuzzing::check_time_datagram(data));
