//! The chat service's requests, replies and events.
