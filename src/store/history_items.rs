//! What the Redis history list (`chat:history:{roomId}`, SPEC 7) holds, apart from how
//! `redis_cache` reads and writes it: the key, an item's JSON after a change, decoding the
//! items, merging them with the durable store's, and the script that replaces one item.

use std::collections::HashSet;

use super::StoreError;
use crate::domain::{HistoryItem, Message, MessageId, RoomId};

/// Replaces the list item holding `"messageId":"<id>"` (ARGV[1]) with ARGV[2] when the item's
/// `rev` is lower than ARGV[3]; returns 1 when the list held the message.
pub const REPLACE_ITEM: &str = r#"
local items = redis.call('LRANGE', KEYS[1], 0, -1)
for i, item in ipairs(items) do
  if string.find(item, ARGV[1], 1, true) then
    local rev = tonumber(string.match(item, '"rev":(%d+)')) or 0
    if rev < tonumber(ARGV[3]) then
      redis.call('LSET', KEYS[1], i - 1, ARGV[2])
    end
    return 1
  end
end
return 0
"#;

/// A message's state as the list holds it after a change: the history item and its `rev`.
pub fn item_json(m: &Message) -> Result<String, StoreError> {
    let mut v = serde_json::to_value(HistoryItem::from(m))
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("rev".into(), m.rev.into());
    }
    Ok(v.to_string())
}
/// The key of a room's cached history (SPEC 7).
pub fn history_key(room: &RoomId) -> String {
    format!("chat:history:{room}")
}

fn order_key(m: &Message) -> (u64, &str) {
    (m.timestamp, m.message_id.as_str())
}

pub fn decode(items: Vec<String>) -> Vec<Message> {
    items
        .iter()
        .filter_map(|s| {
            let v: serde_json::Value = serde_json::from_str(s).ok()?;
            Message::from_json(&v)
                .map_err(|e| tracing::warn!(cause = %e, "history cache: skipping a bad entry"))
                .ok()
        })
        .collect()
}

/// Union by id, ordered oldest first, the newest `limit` kept.
pub fn merge(mut a: Vec<Message>, b: Vec<Message>, limit: usize) -> Vec<Message> {
    let ids: HashSet<MessageId> = a.iter().map(|m| m.message_id.clone()).collect();
    a.extend(b.into_iter().filter(|m| !ids.contains(&m.message_id)));
    a.sort_by(|x, y| order_key(x).cmp(&order_key(y)));
    let skip = a.len().saturating_sub(limit);
    a.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageBody, MessageType, UserId, Username};

    fn msg(id_ts: u64, text: &str) -> Message {
        Message::new(
            MessageId::generate(id_ts),
            RoomId::parse("r").unwrap(),
            UserId::parse("u").unwrap(),
            Username::parse("u").unwrap(),
            MessageBody::parse(text, 100).unwrap(),
            MessageType::Text,
            id_ts,
            None,
        )
    }

    #[test]
    fn merge_dedupes_orders_and_keeps_the_newest() {
        let (m1, m2, m3) = (msg(1000, "a"), msg(2000, "b"), msg(3000, "c"));
        let merged = merge(
            vec![m2.clone(), m3.clone()],
            vec![m1.clone(), m2.clone()],
            10,
        );
        let texts: Vec<_> = merged.iter().map(|m| m.message.as_str()).collect();
        assert_eq!(texts, ["a", "b", "c"]);
        let merged = merge(vec![m3], vec![m1, m2], 2);
        let texts: Vec<_> = merged.iter().map(|m| m.message.as_str()).collect();
        assert_eq!(texts, ["b", "c"]);
    }
}
