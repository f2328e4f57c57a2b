//! The exec service's requests, replies and events.
