//! The message lifecycle of SPEC 10: edits, deletes (tombstones), replies, reactions and read
//! markers, and the history item that shows a message's current state.

use serde::Serialize;

use super::{
    Message, MessageBody, MessageId, MessageType, RoomId, UserId, Username, ValidationError,
};

/// Most characters of an emoji (Unicode scalar values).
pub const MAX_EMOJI_CHARS: usize = 32;
/// Most distinct emoji on one message.
pub const MAX_REACTIONS_PER_MESSAGE: usize = 20;
/// Most user ids a history item lists per emoji (the newest).
pub const MAX_REACTION_USERS: usize = 50;

/// A reaction's emoji: 1-32 characters, no whitespace and no control characters. Any short
/// token is accepted (`👍`, `:+1:`, `🇫🇷`, a skin-tone sequence): what an emoji picker sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Emoji(String);

impl Emoji {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let n = s.chars().count();
        if n == 0 || n > MAX_EMOJI_CHARS {
            return Err(ValidationError::new(format!(
                "emoji must be 1-{MAX_EMOJI_CHARS} characters"
            )));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ValidationError::new(
                "emoji must not contain whitespace or control characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Emoji {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One emoji on a message as history shows it: how many users reacted with it and (at most
/// `MAX_REACTION_USERS` of) who, oldest first, newest last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reaction {
    pub emoji: Emoji,
    pub count: u64,
    pub user_ids: Vec<UserId>,
}

impl Reaction {
    /// Groups `(emoji, user)` pairs, given oldest first, into reactions in the order each
    /// emoji first appeared.
    pub fn group(pairs: impl IntoIterator<Item = (Emoji, UserId)>) -> Vec<Self> {
        let mut out: Vec<Self> = Vec::new();
        for (emoji, user) in pairs {
            match out.iter_mut().find(|r| r.emoji == emoji) {
                Some(r) => {
                    r.count += 1;
                    r.user_ids.push(user);
                }
                None => out.push(Self {
                    emoji,
                    count: 1,
                    user_ids: vec![user],
                }),
            }
        }
        for r in &mut out {
            let skip = r.user_ids.len().saturating_sub(MAX_REACTION_USERS);
            r.user_ids.drain(..skip);
        }
        out
    }
}

/// What a change does to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// New text (author only; not on a deleted message).
    Edit(MessageBody),
    /// Erase the text, keep a tombstone (author only; harmless when repeated).
    Delete,
    /// Add or remove the acting user's `emoji` (idempotent per user and emoji).
    React { emoji: Emoji, add: bool },
}

/// One change to a stored message, by `user_id`, at `at` (epoch ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageChange {
    pub room_id: RoomId,
    pub message_id: MessageId,
    pub user_id: UserId,
    pub at: u64,
    pub kind: ChangeKind,
}

/// A user's read marker in a room: the newest message it has read. It never moves backwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadMarker {
    #[serde(skip)]
    pub room_id: RoomId,
    pub user_id: UserId,
    pub message_id: MessageId,
    /// Epoch milliseconds.
    pub read_at: u64,
}

/// A message as history shows it (`message_history`, REST history, the Redis history cache):
/// the `new_message` fields, then `replyTo`, `editedAt`, `deleted` when they apply, and
/// `reactions` always.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryItem<'a> {
    message_id: &'a MessageId,
    room_id: &'a RoomId,
    user_id: &'a UserId,
    username: &'a Username,
    message: &'a MessageBody,
    message_type: MessageType,
    timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<&'a MessageId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    edited_at: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    reactions: &'a [Reaction],
}

impl<'a> From<&'a Message> for HistoryItem<'a> {
    fn from(m: &'a Message) -> Self {
        Self {
            message_id: &m.message_id,
            room_id: &m.room_id,
            user_id: &m.user_id,
            username: &m.username,
            message: &m.message,
            message_type: m.message_type,
            timestamp: m.timestamp,
            reply_to: m.reply_to.as_ref(),
            edited_at: m.edited_at,
            deleted: m.deleted,
            reactions: &m.reactions,
        }
    }
}

/// Messages as a history array.
pub fn history_items(messages: &[Message]) -> Vec<HistoryItem<'_>> {
    messages.iter().map(HistoryItem::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emoji_rules() {
        for ok in ["👍", ":+1:", "🇫🇷", "👍🏽", "❤️", &"x".repeat(32)] {
            assert!(Emoji::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            " ",
            "👍 ",
            "a\tb",
            "\u{7}",
            &"x".repeat(33),
            "a\u{00A0}b",
        ] {
            assert!(Emoji::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reactions_group_in_first_seen_order_and_keep_the_newest_users() {
        let u = |s: &str| UserId::parse(s).unwrap();
        let e = |s: &str| Emoji::parse(s).unwrap();
        let mut pairs = vec![(e("b"), u("1")), (e("a"), u("2")), (e("b"), u("3"))];
        for i in 0..60 {
            pairs.push((e("c"), u(&format!("c{i}"))));
        }
        let r = Reaction::group(pairs);
        assert_eq!(r.len(), 3);
        assert_eq!((r[0].emoji.as_str(), r[0].count), ("b", 2));
        assert_eq!(r[0].user_ids, vec![u("1"), u("3")]);
        assert_eq!((r[2].count, r[2].user_ids.len()), (60, MAX_REACTION_USERS));
        assert_eq!(r[2].user_ids.last().unwrap().as_str(), "c59");
        assert_eq!(r[2].user_ids[0].as_str(), "c10");
    }
}
