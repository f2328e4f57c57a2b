//! The errors chat answers with, in one place: each is a code a program can test
//! ([`ErrorCode`]) and a message a person can read, quoting names only as
//! `proto::chat::shown` quotes them so that no refusal outgrows a header.

use super::MEMBERSHIPS_PER_SOURCE;
use crate::proto::chat::{MAX_ROOMS, MAX_ROOMS_PER_MEMBER, shown};
use crate::wire::{ErrorCode, RemoteError};

/// Any request but `chat_login` on a connection that has not logged in.
pub(super) fn not_logged_in() -> RemoteError {
    RemoteError::new(ErrorCode::NotLoggedIn, "log in first with chat_login")
}

/// `chat_login` on a connection that already has.
pub(super) fn already_logged_in() -> RemoteError {
    RemoteError::new(ErrorCode::BadRequest, "already logged in")
}

/// The answer to whatever a member sends after it was dropped: its requests are no longer
/// carried out, and its connection is about to close.
pub(super) fn dropped() -> RemoteError {
    RemoteError::new(
        ErrorCode::Dropped,
        "you were dropped from chat (too slow); connect again",
    )
}

pub(super) fn name_taken(name: &str) -> RemoteError {
    RemoteError::new(
        ErrorCode::NameTaken,
        format!("the nickname `{}` is taken; choose another", shown(name)),
    )
}

pub(super) fn not_in_room(room: &str) -> RemoteError {
    RemoteError::new(
        ErrorCode::NotInRoom,
        format!("you are not in room `{}`", shown(room)),
    )
}

pub(super) fn nobody_called(name: &str) -> RemoteError {
    RemoteError::new(not_found(), format!("nobody called `{}` is online", shown(name)))
}

pub(super) fn no_room(room: &str) -> RemoteError {
    RemoteError::new(not_found(), format!("there is no room `{}`", shown(room)))
}

/// A member in as many rooms as it may be, joining one more.
pub(super) fn too_many_rooms_joined() -> RemoteError {
    RemoteError::new(
        ErrorCode::Busy,
        format!("you are in {MAX_ROOMS_PER_MEMBER} rooms already; leave one first"),
    )
}

/// A join from an address whose clients are in as many rooms as one address may be.
pub(super) fn too_many_rooms_from_source() -> RemoteError {
    RemoteError::new(
        ErrorCode::Busy,
        format!("clients from your address are in {MEMBERSHIPS_PER_SOURCE} rooms already; leave one first"),
    )
}

/// A new room on a server that keeps as many as it may.
pub(super) fn too_many_rooms() -> RemoteError {
    RemoteError::new(
        ErrorCode::Busy,
        format!("this server already keeps {MAX_ROOMS} rooms; join an existing one"),
    )
}

fn not_found() -> ErrorCode {
    ErrorCode::NotFound
}
