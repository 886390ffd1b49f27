//! A journal record's payload: the messages of one run of plain sends, as JSON
//! (`{"o":<outbox>,"m":[row,..]}`), each row the message's columns as
//! `store::rows::message_from_row` reads them. `journal.rs` frames and stores it.

use serde_json::Value;

use crate::domain::Message;
use crate::store::StoreError;
use crate::store::rows::{Columns, message_from_row};

/// A record read back: its messages and whether they carry outbox entries.
pub(super) struct Record {
    pub(super) lsn: u64,
    pub(super) outbox: bool,
    pub(super) messages: Vec<Message>,
}

/// A record's row as written: the message's columns in `message_from_row`'s order (the last
/// two, edited and deleted, are null for a new message).
type Row<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    u64,
    Option<&'a str>,
    Option<&'a str>,
    (),
    (),
);

/// The payload of a record of `messages`: serialized straight from borrowed fields (no JSON
/// value tree per message on the ack path).
pub(super) fn encode(messages: &[Message], outbox: bool) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Payload<'a> {
        o: bool,
        m: Vec<Row<'a>>,
    }
    let m = messages
        .iter()
        .map(|m| {
            (
                m.message_id.as_str(),
                m.room_id.as_str(),
                m.user_id.as_str(),
                m.username.as_str(),
                m.message.as_str(),
                m.message_type.as_str(),
                m.timestamp,
                m.client_message_id.as_ref().map(|c| c.as_str()),
                m.reply_to.as_ref().map(|r| r.as_str()),
                (),
                (),
            )
        })
        .collect();
    serde_json::to_vec(&Payload { o: outbox, m }).expect("strings and numbers always encode")
}

pub(super) fn decode(lsn: u64, payload: &[u8]) -> Result<Record, StoreError> {
    let corrupt = |what: &str| StoreError::Internal(format!("journal record {lsn}: {what}"));
    let v: Value = serde_json::from_slice(payload).map_err(|e| corrupt(&e.to_string()))?;
    let outbox = v["o"].as_bool().ok_or_else(|| corrupt("no outbox flag"))?;
    let rows = v["m"].as_array().ok_or_else(|| corrupt("no messages"))?;
    let messages = rows
        .iter()
        .map(|row| {
            let cols = row
                .as_array()
                .ok_or_else(|| corrupt("a row is not an array"))?;
            message_from_row(&JsonRow(cols))
        })
        .collect::<Result<_, _>>()?;
    Ok(Record {
        lsn,
        outbox,
        messages,
    })
}

/// A record's row as the shared row decoder reads it.
struct JsonRow<'a>(&'a [Value]);

impl JsonRow<'_> {
    fn col(&self, i: usize) -> &Value {
        self.0.get(i).unwrap_or(&Value::Null)
    }
}

impl Columns for JsonRow<'_> {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        self.maybe_text(i)?
            .ok_or_else(|| StoreError::Internal(format!("journal row: column {i} is not text")))
    }

    fn maybe_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.col(i).as_str().map(str::to_string))
    }

    fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.maybe_int(i)?
            .ok_or_else(|| StoreError::Internal(format!("journal row: column {i} is not a number")))
    }

    fn maybe_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.col(i).as_i64())
    }

    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.col(i).as_bool().unwrap_or(false))
    }
}
