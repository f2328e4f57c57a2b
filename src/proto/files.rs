//! The files service's requests, replies and events.
