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
