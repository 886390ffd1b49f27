//! Data-subject commands: `export --room` / `export --user` write messages as JSON lines (one
//! SPEC 10 history item per line: the `new_message` fields, `editedAt`, `deleted`, `replyTo`,
//! `reactions`), oldest first per room, rooms in id order; `erase --user` deletes every message
//! of a user as SPEC 10's `delete_message` does (the store erases the text and keeps a
//! tombstone; with an outbox, a `message.deleted` event each).
//!
//! A user's messages are found by walking every room (the port has no index by author):
//! linear in the store's size, which suits a rare operator's command.

use std::io::Write;

use super::PAGE;
use super::copy::all_room_ids;
use crate::domain::{ChangeKind, HistoryItem, Message, MessageChange, RoomId, UserId, now_ms};
use crate::store::{MessageStore, StoreError};

/// Calls `each` with every page of the room's messages, oldest first.
async fn walk<F>(store: &dyn MessageStore, room: &RoomId, mut each: F) -> anyhow::Result<()>
where
    F: AsyncPage,
{
    let mut last = None;
    loop {
        let page = store.scan(room, last.as_ref(), PAGE).await?;
        let Some(end) = page.last() else {
            return Ok(());
        };
        last = Some(end.message_id.clone());
        each.page(&page).await?;
    }
}

/// What `walk` does with a page.
trait AsyncPage {
    async fn page(&mut self, page: &[Message]) -> anyhow::Result<()>;
}

/// Writes the lines of the messages `keep` accepts.
struct Lines<'a, W: Write, K: Fn(&Message) -> bool> {
    out: &'a mut W,
    keep: K,
    written: u64,
}

impl<W: Write, K: Fn(&Message) -> bool> AsyncPage for Lines<'_, W, K> {
    async fn page(&mut self, page: &[Message]) -> anyhow::Result<()> {
        for m in page.iter().filter(|m| (self.keep)(m)) {
            serde_json::to_writer(&mut *self.out, &HistoryItem::from(m))?;
            self.out.write_all(b"\n")?;
            self.written += 1;
        }
        Ok(())
    }
}

/// Writes every message of `room` as a JSON line; how many.
pub async fn export_room(
    store: &dyn MessageStore,
    room: &RoomId,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let mut lines = Lines {
        out,
        keep: |_: &Message| true,
        written: 0,
    };
    walk(store, room, &mut lines).await?;
    lines.out.flush()?;
    Ok(lines.written)
}

/// Writes every message `user` wrote, in every room, as JSON lines; how many.
pub async fn export_user(
    store: &dyn MessageStore,
    user: &UserId,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let mut lines = Lines {
        out,
        keep: |m: &Message| m.user_id == *user,
        written: 0,
    };
    for room in all_room_ids(store).await? {
        walk(store, &room, &mut lines).await?;
    }
    lines.out.flush()?;
    Ok(lines.written)
}

/// Deletes the user's messages that are not deleted yet.
struct Erase<'a> {
    store: &'a dyn MessageStore,
    user: &'a UserId,
    erased: u64,
}

impl AsyncPage for Erase<'_> {
    async fn page(&mut self, page: &[Message]) -> anyhow::Result<()> {
        for m in page
            .iter()
            .filter(|m| m.user_id == *self.user && !m.deleted)
        {
            let change = MessageChange {
                room_id: m.room_id.clone(),
                message_id: m.message_id.clone(),
                user_id: m.user_id.clone(),
                at: now_ms(),
                kind: ChangeKind::Delete,
            };
            match self.store.change(change).await {
                Ok(c) if c.effective => self.erased += 1,
                Ok(_) | Err(StoreError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

impl<T: AsyncPage> AsyncPage for &mut T {
    async fn page(&mut self, page: &[Message]) -> anyhow::Result<()> {
        (**self).page(page).await
    }
}

/// Deletes every message of `user` in every room (SPEC 10 deletes: tombstones, the text gone
/// from the store); how many it deleted. Harmless when repeated.
pub async fn erase_user(store: &dyn MessageStore, user: &UserId) -> anyhow::Result<u64> {
    let mut erase = Erase {
        store,
        user,
        erased: 0,
    };
    for room in all_room_ids(store).await? {
        walk(store, &room, &mut erase).await?;
    }
    Ok(erase.erased)
}
