//! Bringing a copied message to its source's state through `MessageStore::change`: the edit
//! (its text and `editedAt`), each user's reactions, then the delete (a tombstone takes no
//! reaction, so reactions go first). Every step is skipped when the target already shows it,
//! and each is idempotent in the store anyway, so applying a message's state twice changes
//! nothing.

use crate::domain::{ChangeKind, Message, MessageChange};
use crate::store::{MessageStore, StoreError};

/// Whether `m` has any state beyond a freshly appended message.
pub(super) fn has_state(m: &Message) -> bool {
    m.edited_at.is_some() || m.deleted || !m.reactions.is_empty()
}

/// `m` as it is appended: its own id, time, author, text, reply and client message id, no
/// edit, tombstone or reaction yet.
pub(super) fn as_appended(m: &Message) -> Message {
    Message {
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
        rev: 0,
        ..m.clone()
    }
}

/// Applies to `target` what `source` (the source's message) shows and `current` (the target's
/// copy) lacks. Returns how many changes it applied.
pub(super) async fn converge(
    target: &dyn MessageStore,
    source: &Message,
    current: &Message,
) -> Result<u64, StoreError> {
    let change = |at: u64, kind: ChangeKind| MessageChange {
        room_id: source.room_id.clone(),
        message_id: source.message_id.clone(),
        user_id: source.user_id.clone(),
        at,
        kind,
    };
    let mut applied = 0;
    if current.deleted {
        return Ok(0);
    }
    if let Some(edited_at) = source.edited_at
        && !source.deleted
        && (current.edited_at != Some(edited_at) || current.message != source.message)
    {
        target
            .change(change(edited_at, ChangeKind::Edit(source.message.clone())))
            .await?;
        applied += 1;
    }
    for group in &source.reactions {
        let have = current.reactions.iter().find(|r| r.emoji == group.emoji);
        for user in &group.user_ids {
            if have.is_some_and(|r| r.user_ids.contains(user)) {
                continue;
            }
            let react = MessageChange {
                user_id: user.clone(),
                ..change(
                    source.timestamp,
                    ChangeKind::React {
                        emoji: group.emoji.clone(),
                        add: true,
                    },
                )
            };
            target.change(react).await?;
            applied += 1;
        }
    }
    if source.deleted {
        // The port's messages carry no `deletedAt`; the newest time known stands for it.
        let at = source.edited_at.unwrap_or(source.timestamp);
        target.change(change(at, ChangeKind::Delete)).await?;
        applied += 1;
    }
    Ok(applied)
}
