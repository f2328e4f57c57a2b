//! The standard time protocols, answered from the system clock: RFC 867 daytime, RFC 868
//! time, and an RFC 4330 SNTP server. Each reply is built by a pure function; the services
//! below only carry it over TCP or UDP.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Local, TimeZone};
use tokio::io::AsyncWriteExt;

use super::time::format_at;
use super::unframed::{DatagramService, ServiceStream, StreamService};

/// Seconds from 1900-01-01 (the epoch of RFC 868 and NTP) to 1970-01-01.
pub(crate) const SECONDS_1900_TO_1970: u64 = 2_208_988_800;

/// The daytime text's format: what inetd's daytime sends (`ctime`), the de facto standard
/// since RFC 867 prescribes none.
const DAYTIME_FORMAT: &str = "%a %b %e %H:%M:%S %Y";

/// RFC 867: the date and time as a line of text.
pub(crate) fn daytime_text<Tz: TimeZone>(now: &DateTime<Tz>) -> String
where
    Tz::Offset: std::fmt::Display,
{
    #[allow(
        clippy::expect_used,
        reason = "DAYTIME_FORMAT is a constant, valid format; the daytime test formats it"
    )]
    let text = format_at(now, DAYTIME_FORMAT).expect("the daytime format is valid (tested)");
    text + "\r\n"
}

/// RFC 868: seconds since 1900 as a 32-bit big-endian number (it wraps in 2036, as the RFC's
/// own clients expect).
pub(crate) fn rfc868_time(now: SystemTime) -> [u8; 4] {
    let seconds = (ntp_timestamp(now) >> 32) as u32;
    seconds.to_be_bytes()
}

/// An NTP timestamp: seconds since 1900 in the high 32 bits (wrapping in 2036), the fraction
/// of a second in the low 32.
pub(crate) fn ntp_timestamp(time: SystemTime) -> u64 {
    let since_1970 = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = (since_1970.as_secs() + SECONDS_1900_TO_1970) & 0xFFFF_FFFF;
    let fraction = (u64::from(since_1970.subsec_nanos()) << 32) / 1_000_000_000;
    (seconds << 32) | fraction
}

/// Length of an NTP packet without extensions.
pub(crate) const NTP_PACKET_LEN: usize = 48;
/// Our stratum: like ntpd's local-clock driver, a clock nobody synchronised us to.
pub(crate) const SNTP_STRATUM: u8 = 10;
/// The reference identifier of a local clock.
pub(crate) const SNTP_REFERENCE: [u8; 4] = *b"LOCL";
/// log2 of the clock's precision in seconds: about a microsecond.
const SNTP_PRECISION: i8 = -20;
const MODE_CLIENT: u8 = 3;
const MODE_SERVER: u8 = 4;

/// RFC 4330 server mode: the reply to a client request received at `received` and answered
/// at `transmit`, or `None` for anything that is not a client request (server and broadcast
/// packets are never answered, so two servers cannot be made to talk to each other).
pub(crate) fn sntp_reply(
    request: &[u8],
    received: SystemTime,
    transmit: SystemTime,
) -> Option<[u8; NTP_PACKET_LEN]> {
    let request = request.first_chunk::<NTP_PACKET_LEN>()?;
    let (version, mode) = ((request[0] >> 3) & 0b111, request[0] & 0b111);
    if mode != MODE_CLIENT || !(1..=4).contains(&version) {
        return None;
    }
    let mut reply = [0; NTP_PACKET_LEN];
    reply[0] = (version << 3) | MODE_SERVER; // leap indicator 0: no warning
    reply[1] = SNTP_STRATUM;
    reply[2] = request[2]; // poll interval: the client's
    reply[3] = SNTP_PRECISION.to_be_bytes()[0];
    // Root delay (4..8) and root dispersion (8..12) are zero: the clock is local.
    reply[12..16].copy_from_slice(&SNTP_REFERENCE);
    reply[16..24].copy_from_slice(&ntp_timestamp(received).to_be_bytes());
    reply[24..32].copy_from_slice(&request[40..48]); // originate: the client's transmit time
    reply[32..40].copy_from_slice(&ntp_timestamp(received).to_be_bytes());
    reply[40..48].copy_from_slice(&ntp_timestamp(transmit).to_be_bytes());
    Some(reply)
}

/// RFC 867 daytime: over TCP the text and then close; over UDP the text for any datagram.
pub(crate) struct Daytime;

#[async_trait]
impl StreamService for Daytime {
    async fn serve(&self, stream: ServiceStream, _peer: SocketAddr) -> std::io::Result<()> {
        send_and_close(stream, daytime_text(&Local::now()).as_bytes()).await
    }
}

#[async_trait]
impl DatagramService for Daytime {
    async fn answer(&self, _request: &[u8], _from: SocketAddr) -> Vec<Bytes> {
        vec![Bytes::from(daytime_text(&Local::now()))]
    }
}

/// RFC 868 time: over TCP four bytes and then close; over UDP four bytes for any datagram.
pub(crate) struct Rfc868Time;

#[async_trait]
impl StreamService for Rfc868Time {
    async fn serve(&self, stream: ServiceStream, _peer: SocketAddr) -> std::io::Result<()> {
        send_and_close(stream, &rfc868_time(SystemTime::now())).await
    }
}

#[async_trait]
impl DatagramService for Rfc868Time {
    async fn answer(&self, _request: &[u8], _from: SocketAddr) -> Vec<Bytes> {
        vec![Bytes::copy_from_slice(&rfc868_time(SystemTime::now()))]
    }
}

/// The SNTP server (UDP only).
pub(crate) struct Sntp;

#[async_trait]
impl DatagramService for Sntp {
    async fn answer(&self, request: &[u8], _from: SocketAddr) -> Vec<Bytes> {
        let received = SystemTime::now();
        sntp_reply(request, received, SystemTime::now())
            .map(|reply| Bytes::copy_from_slice(&reply))
            .into_iter()
            .collect()
    }

    /// NTP clients may send from port 123; answering them cannot start a loop, since only
    /// client requests are answered and replies are server packets.
    fn answers_port(&self, _port: u16) -> bool {
        true
    }
}

/// Writes `bytes` and closes; a client that left early is not an error worth reporting.
async fn send_and_close(mut stream: ServiceStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, Utc};
    use std::time::Duration;

    fn moment() -> DateTime<Utc> {
        let naive = NaiveDate::from_ymd_opt(2024, 2, 9)
            .unwrap()
            .and_hms_opt(3, 4, 5)
            .unwrap();
        Utc.from_utc_datetime(&naive)
    }

    fn system_time(time: &DateTime<Utc>, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(time.timestamp() as u64, nanos)
    }

    #[test]
    fn daytime_is_a_ctime_line() {
        assert_eq!(daytime_text(&moment()), "Fri Feb  9 03:04:05 2024\r\n");
    }

    #[test]
    fn rfc868_counts_seconds_since_1900_and_wraps_in_2036() {
        assert_eq!(rfc868_time(UNIX_EPOCH), 2_208_988_800u32.to_be_bytes());
        let seconds = u32::from_be_bytes(rfc868_time(system_time(&moment(), 0)));
        assert_eq!(u64::from(seconds), 1_707_447_845 + SECONDS_1900_TO_1970);
        // 2036-02-07 06:28:16 UTC is 2^32 seconds after 1900: era 1 begins at zero.
        let wrap = UNIX_EPOCH + Duration::from_secs((1 << 32) - SECONDS_1900_TO_1970);
        assert_eq!(rfc868_time(wrap), [0, 0, 0, 0]);
    }

    #[test]
    fn ntp_timestamps_carry_the_fraction() {
        let stamp = ntp_timestamp(system_time(&moment(), 500_000_000));
        assert_eq!(stamp >> 32, 1_707_447_845 + SECONDS_1900_TO_1970);
        assert_eq!(stamp & 0xFFFF_FFFF, 1 << 31);
    }

    fn client_request(version: u8, mode: u8) -> [u8; 48] {
        let mut request = [0; 48];
        request[0] = (version << 3) | mode;
        request[2] = 6;
        request[40..48].copy_from_slice(b"CLIENTTX");
        request
    }

    #[test]
    fn sntp_answers_client_requests_in_server_mode() {
        let received = system_time(&moment(), 0);
        let transmit = system_time(&moment(), 250_000_000);
        for version in 1..=4 {
            let reply = sntp_reply(&client_request(version, 3), received, transmit).unwrap();
            assert_eq!(reply[0], (version << 3) | 4, "leap 0, version copied, mode 4");
            assert_eq!(reply[1], 10);
            assert_eq!(reply[2], 6);
            assert_eq!(&reply[12..16], b"LOCL");
            assert_eq!(&reply[24..32], b"CLIENTTX");
            assert_eq!(reply[32..40], ntp_timestamp(received).to_be_bytes());
            assert_eq!(reply[40..48], ntp_timestamp(transmit).to_be_bytes());
        }
        let mut with_extension = client_request(4, 3).to_vec();
        with_extension.extend_from_slice(&[0; 20]);
        assert!(sntp_reply(&with_extension, received, transmit).is_some());
    }

    #[test]
    fn sntp_ignores_everything_but_client_requests() {
        let now = SystemTime::now();
        for mode in [0, 1, 2, 4, 5, 6, 7] {
            assert!(
                sntp_reply(&client_request(4, mode), now, now).is_none(),
                "mode {mode}"
            );
        }
        for version in [0, 5, 7] {
            assert!(sntp_reply(&client_request(version, 3), now, now).is_none());
        }
        assert!(sntp_reply(&client_request(4, 3)[..47], now, now).is_none());
        assert!(sntp_reply(&[], now, now).is_none());
    }
}
