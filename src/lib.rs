//! sockit: a network toolkit built on one framed, authenticated, encrypted protocol.
//!
//! The layers, bottom up: [`wire`] (frames and the connection that carries them), [`auth`]
//! (the shared secret and the session handshake), [`services`] (what a server offers),
//! [`server`] (the runtime) and [`client`] (the library side of the `sockit` commands).

#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub(crate) mod disk;
pub mod fetch;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod services;
pub(crate) mod source;
pub(crate) mod stop;
pub mod text;
pub mod wire;

pub use auth::Secret;
pub use client::{Client, ClientConfig, ClientError};
pub use server::{Server, ServerConfig};
