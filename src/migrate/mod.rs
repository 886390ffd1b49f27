//! The operator's data commands (issue 18.4), written against the `MessageStore` port only, so
//! they work between any two backends: `migrate` copies rooms, messages, reactions and read
//! markers from one store to another; `export` writes a room's or a user's messages as JSON
//! lines; `erase` deletes every message of a user as SPEC 10's deletes do.
//!
//! # Map
//! - `mod.rs`: [`Progress`], the callback the commands report through (the binary draws it
//!   as an indicatif bar), and the page sizes.
//! - `copy.rs`: [`copy::migrate`]: the copy, room by room, its resume point, the count check
//!   ([`copy::Report`]).
//! - `state.rs`: bringing a copied message to its source's state (edit, reactions, delete)
//!   through `MessageStore::change`.
//! - `subject.rs`: [`subject::export_room`], [`subject::export_user`], [`subject::erase_user`].
//!
//! # How a copy stays idempotent and resumable
//! Messages are copied with `append` (their own id, timestamp, author, reply and client
//! message id), a page at a time in room order, then brought to their source's state with
//! `change` (edits, reactions, deletes: each idempotent). The writers commit appends in queue
//! order, so what an interrupted copy left in a room is a prefix of the source's messages. A
//! (re-)run therefore starts each room after the newest message the target holds, after
//! bringing the last page before it to its source's state again (the page an interruption may
//! have left half done). A target whose newest message is not in the source (it took messages
//! of its own) is walked from the start instead, and every message it already holds is
//! skipped. Read markers never move backwards, rooms are created only when missing: a
//! re-run copies nothing twice.

pub mod copy;
mod state;
pub mod subject;

/// Messages read and written per page.
pub const PAGE: usize = 1000;
/// Room ids listed per page.
pub const ROOM_PAGE: usize = 1000;

/// What a command reports while it runs (the binary draws a progress bar; tests ignore it).
pub trait Progress: Send + Sync {
    /// The total work is known: `total` messages.
    fn start(&self, _total: u64) {}
    /// `n` more messages handled (copied or found already there).
    fn advance(&self, _n: u64) {}
    /// A line for the operator (the bar stays below it).
    fn note(&self, _line: &str) {}
    /// The work is done.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct Quiet;

impl Progress for Quiet {}
