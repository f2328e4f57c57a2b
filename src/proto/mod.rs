//! The protocol both sides speak: one typed request per command, the replies and events, the
//! limits and the default ports (docs/protocol.md, section 3).
//!
//! Client and services both import this module and neither imports the other, as bore's
//! `shared.rs`: a request the client encodes is the type the service decodes. It depends on
//! [`crate::wire`] only.

pub mod chat;
pub mod exec;
pub mod files;
pub mod path;
pub mod ports;
pub mod time;

/// A header as the JSON it travels as: the tests pin each message's bytes to the ones
/// docs/protocol.md shows.
#[cfg(test)]
fn json(header: &crate::wire::Header) -> String {
    let mut out = bytes::BytesMut::new();
    header.write_json(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}
