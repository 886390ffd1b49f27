//! The embedded store's journal (`DATA_DIR/chat.journal`): the durable write of a run of plain
//! sends. The writer thread appends one record per run (`pwrite` into a preallocated file, then
//! `fdatasync`) and answers the senders; the apply thread (`apply.rs`) writes the same messages
//! into SQLite later, in larger transactions, and records the highest record it applied
//! (`journal_state.applied`) in the same transaction as the messages. At open, the records
//! beyond it are applied before anything else runs (`recover`).
//!
//! # Format
//! A record is a 24-byte header (`MAGIC`, the record's sequence number `lsn`, the payload's
//! length, the payload's FNV-1a 64 hash) and the payload (`record.rs`): JSON,
//! `{"o":<outbox>,"m":[row,..]}`, each row the message's columns as
//! `store::rows::message_from_row` reads them.
//!
//! # Reuse: two halves
//! The file is two halves of `HALF` bytes; a record lies within one. The writer fills a half,
//! then goes on at the start of the other one if every record there is applied (written a
//! whole half ago, so under load it is: the apply thread lags by `apply::APPLY_EVERY` at most),
//! and otherwise first waits for the apply thread. So a full half costs no wait under a
//! steady load, where the apply thread is never quite done: new records arrive while it
//! writes. When every record is applied (the writer sees the apply thread's `applied` reach
//! its last record), it goes back to the file's start.
//!
//! A scan at open reads each half from its start while headers and hashes hold. Records of an
//! earlier pass that a new one has not overwritten carry older sequence numbers, all applied,
//! so they are skipped; the rest are taken in sequence order from the one after `applied`,
//! and a gap ends them. A record is written only after the one before it was flushed, so a
//! torn record is the last one and was never acknowledged. After a failed write, whose bytes
//! may be on disk, the same number is written again at the same place or at the file's start,
//! never in the other half, so the scan meets the second copy first.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::record::{Record, decode};
use super::sqlite_error;
use crate::store::StoreError;

/// The journal's name in `DATA_DIR`.
pub(super) const FILE: &str = "chat.journal";
/// The journal's size, written with zeros when created: a flush then writes data only (no
/// block allocation, no file-size change for `fdatasync` to carry).
pub(super) const SIZE: u64 = 4 * 1024 * 1024;
/// Each half of the file (see "Reuse" above).
const HALF: u64 = SIZE / 2;
/// A run of sends whose record could be larger than this (bytes, estimated from the texts) is
/// committed to SQLite directly; a record always fits a half.
pub(super) const MAX_RECORD: usize = 1024 * 1024;
const MAGIC: u32 = 0x4a52_4e31; // "JRN1"
const HEADER: usize = 24;

/// The writer's end: where the next record goes.
pub(super) struct Journal {
    file: File,
    offset: u64,
    /// The last record written (its `lsn`); the next one is `last + 1`.
    pub(super) last: u64,
    /// How far records may lie since the last `erase` (the whole file after open).
    high: u64,
    /// The last record written into each half (the writer may go on in a half once `applied`
    /// reaches it).
    half_last: [u64; 2],
    /// The last `append` failed (see there).
    unsure: bool,
    /// The half the next record goes into (0 or 1): a half filled to its last byte is left
    /// only through `turn`, like any other.
    half: usize,
}

impl Journal {
    /// Opens `dir/chat.journal` (created and zero-filled when missing or of another size) and
    /// returns it with the records that `applied` (SQLite's `journal_state`) does not cover,
    /// in order. The next record is written at the file's start, numbered after them.
    pub(super) fn open(dir: &Path, applied: u64) -> std::io::Result<(Self, Vec<Record>)> {
        let path = dir.join(FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let records = if file.metadata()?.len() == SIZE {
            scan(&file, applied)?
        } else {
            Vec::new()
        };
        if file.metadata()?.len() != SIZE {
            fill(&file)?;
        }
        let last = records.last().map_or(applied, |r| r.lsn);
        Ok((
            Self {
                file,
                offset: 0,
                last,
                high: SIZE,
                half_last: [last; 2],
                unsure: false,
                half: 0,
            },
            records,
        ))
    }

    /// Whether a record of `len` payload bytes fits after the last one, in its half.
    pub(super) fn fits(&self, len: usize) -> bool {
        let end = HALF * (self.half as u64 + 1);
        self.offset + (HEADER + len) as u64 <= end
    }

    /// Goes on at the start of the other half when every record in it is `applied`; returns
    /// whether it did.
    pub(super) fn turn(&mut self, applied: u64) -> bool {
        let other = 1 - self.half;
        if self.unsure || self.half_last[other] > applied {
            return false;
        }
        self.half = other;
        self.offset = HALF * other as u64;
        true
    }

    /// Writes from the file's start again (every record in it is applied).
    pub(super) fn rewind(&mut self) {
        self.offset = 0;
        self.half = 0;
    }

    /// Whether the file holds records since the last `rewind`.
    pub(super) fn is_rewound(&self) -> bool {
        self.offset == 0
    }

    /// Appends the record `last + 1` of `messages` and flushes it; returns its `lsn`. The
    /// caller checked `fits`. On an error nothing may be acknowledged: the record may or may
    /// not be on disk (a retry of a send with a `clientMessageId` finds it either way).
    pub(super) fn append(&mut self, payload: &[u8]) -> std::io::Result<u64> {
        let lsn = self.last + 1;
        let buf = frame(lsn, payload);
        // Even a failed write may have reached the disk: `erase` must zero it too.
        self.high = self.high.max(self.offset + buf.len() as u64);
        let written = self
            .file
            .write_all_at(&buf, self.offset)
            .and_then(|()| self.file.sync_data());
        // After a failure a record `lsn` may lie here; the scan must meet its second copy
        // first, so the next one goes here again or to the file's start, not to the other
        // half (`turn`), which the scan reads after this one when this is the first.
        self.unsure = written.is_err();
        written?;
        self.half_last[self.half] = lsn;
        self.offset += buf.len() as u64;
        self.last = lsn;
        Ok(lsn)
    }

    /// Zeroes every record (all applied) and flushes the zeros: a deleted message's text
    /// leaves the journal as it leaves SQLite's rows.
    pub(super) fn erase(&mut self) -> std::io::Result<()> {
        let zeros = vec![0u8; 64 * 1024];
        let mut at = 0;
        while at < self.high {
            let n = (self.high - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        self.file.sync_data()?;
        self.offset = 0;
        self.half = 0;
        self.high = 0;
        Ok(())
    }
}

/// A record as written: the header, then `payload`.
fn frame(lsn: u64, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER + payload.len());
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(&fnv1a(payload).to_le_bytes());
    buf.extend_from_slice(payload);
    buf
}

/// The records after `applied`, read from the start of each half of `file` (see "Reuse"
/// above), in sequence order up to the first gap.
fn scan(file: &File, applied: u64) -> std::io::Result<Vec<Record>> {
    let mut found = Vec::new();
    for start in [0, HALF] {
        scan_half(file, start, applied, &mut found)?;
    }
    found.sort_by_key(|(lsn, _)| *lsn);
    let mut records = Vec::new();
    let mut next = applied + 1;
    for (lsn, payload) in found {
        if lsn < next {
            continue; // a failed write's copy, read after the second one (see `append`)
        }
        if lsn > next {
            break;
        }
        match decode(lsn, &payload) {
            Ok(record) => records.push(record),
            Err(e) => {
                tracing::error!(error = %e, "embedded store: a journal record cannot be read; the journal ends before it");
                break;
            }
        }
        next += 1;
    }
    Ok(records)
}

/// Adds to `found` the records after `applied` in the half at `start`, read while their
/// headers and hashes hold.
fn scan_half(
    file: &File,
    start: u64,
    applied: u64,
    found: &mut Vec<(u64, Vec<u8>)>,
) -> std::io::Result<()> {
    let end = start + HALF;
    let mut offset = start;
    let mut header = [0u8; HEADER];
    while offset + HEADER as u64 <= end {
        file.read_exact_at(&mut header, offset)?;
        let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap());
        let long = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
        let (len, lsn, hash) = (word(4) as u64, long(8), long(16));
        if word(0) != MAGIC || offset + HEADER as u64 + len > end {
            break;
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact_at(&mut payload, offset + HEADER as u64)?;
        if fnv1a(&payload) != hash {
            break;
        }
        if lsn > applied {
            found.push((lsn, payload));
        }
        offset += HEADER as u64 + len;
    }
    Ok(())
}

/// Zero-fills `file` to `SIZE`.
fn fill(file: &File) -> std::io::Result<()> {
    file.set_len(0)?;
    let zeros = vec![0u8; 256 * 1024];
    let mut at = 0;
    while at < SIZE {
        file.write_all_at(&zeros, at)?;
        at += zeros.len() as u64;
    }
    file.sync_all()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The last record applied to SQLite (0: none).
pub(super) fn applied(conn: &Connection) -> Result<u64, StoreError> {
    let applied: Option<i64> = conn
        .query_row("SELECT applied FROM journal_state WHERE id = 0", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sqlite_error)?;
    Ok(applied.unwrap_or(0) as u64)
}

/// Records `lsn` as applied (inside the transaction that applied it).
pub(super) fn set_applied(conn: &Connection, lsn: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO journal_state (id, applied) VALUES (0, ?1)
         ON CONFLICT(id) DO UPDATE SET applied = excluded.applied",
    )?
    .execute(params![lsn as i64])
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Message;
    use crate::domain::{MessageBody, MessageId, MessageType, RoomId, UserId, Username};
    use crate::store::embedded::record::encode;

    fn id(n: u32) -> String {
        format!("{n:024x}")
    }

    fn message(n: u32) -> Message {
        Message {
            message_id: MessageId::parse(&id(n)).unwrap(),
            room_id: RoomId::parse("r1").unwrap(),
            user_id: UserId::parse("u1").unwrap(),
            username: Username::parse("Ann").unwrap(),
            message: MessageBody::from_stored(format!("text {n} \"quoted\" é")),
            message_type: MessageType::parse_stored("text").unwrap(),
            timestamp: 1_700_000_000_000 + u64::from(n),
            client_message_id: None,
            reply_to: (n > 1).then(|| MessageId::parse(&id(1)).unwrap()),
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            rev: 0,
        }
    }

    fn ids(records: &[Record]) -> Vec<(u64, Vec<String>)> {
        records
            .iter()
            .map(|r| {
                let ids = r
                    .messages
                    .iter()
                    .map(|m| m.message_id.as_str().to_string())
                    .collect();
                (r.lsn, ids)
            })
            .collect()
    }

    #[test]
    fn records_after_the_applied_one_come_back_in_order_and_a_torn_one_ends_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, none) = Journal::open(dir.path(), 0).unwrap();
        assert!(none.is_empty());
        for n in 1..=3 {
            j.append(&encode(&[message(n)], n == 2)).unwrap();
        }
        drop(j);
        let (_, records) = Journal::open(dir.path(), 1).unwrap();
        assert_eq!(ids(&records), [(2, vec![id(2)]), (3, vec![id(3)])]);
        assert!(records[0].outbox && !records[1].outbox);
        let m = &records[0].messages[0];
        assert_eq!(m.message.as_str(), "text 2 \"quoted\" é");
        assert_eq!(m.reply_to.as_ref().unwrap().as_str(), id(1));
        assert_eq!(m.timestamp, 1_700_000_000_002);

        // A torn third record (its last byte never reached the disk): the scan stops before it.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join(FILE))
            .unwrap();
        let mut at = 0u64;
        for _ in 0..2 {
            let mut h = [0u8; HEADER];
            file.read_exact_at(&mut h, at).unwrap();
            at += HEADER as u64 + u64::from(u32::from_le_bytes(h[4..8].try_into().unwrap()));
        }
        let mut h = [0u8; HEADER];
        file.read_exact_at(&mut h, at).unwrap();
        let end = at + HEADER as u64 + u64::from(u32::from_le_bytes(h[4..8].try_into().unwrap()));
        file.write_all_at(b"#", end - 1).unwrap();
        let (_, records) = Journal::open(dir.path(), 0).unwrap();
        assert_eq!(
            ids(&records).iter().map(|r| r.0).collect::<Vec<_>>(),
            [1, 2]
        );
    }

    #[test]
    fn a_rewound_journal_skips_what_an_earlier_pass_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0).unwrap();
        // First pass: records 1..=4, all applied; the second pass writes 5 over the start.
        for n in 1..=4 {
            j.append(&encode(&[message(n), message(n + 100)], false))
                .unwrap();
        }
        j.rewind();
        assert!(j.is_rewound());
        j.append(&encode(&[message(5)], false)).unwrap();
        drop(j);
        let (j, records) = Journal::open(dir.path(), 4).unwrap();
        assert_eq!(ids(&records), [(5, vec![id(5)])]);
        assert_eq!(j.last, 5);
        // With 5 applied too, nothing is left: the earlier pass's records are older.
        let (j, records) = Journal::open(dir.path(), 5).unwrap();
        assert!(records.is_empty());
        assert_eq!(j.last, 5);
    }

    /// A record of about 100 KB (a half holds 20 of them).
    fn big(n: u32) -> Vec<u8> {
        let mut m = message(n);
        m.message = MessageBody::from_stored(format!("{n} {}", "x".repeat(100_000)));
        encode(&[m], false)
    }

    /// Appends big records while they fit the current half; returns the last one's number.
    fn fill_half(j: &mut Journal, from: u32) -> u32 {
        let mut n = from;
        while j.fits(big(n).len()) {
            j.append(&big(n)).unwrap();
            n += 1;
        }
        n - 1
    }

    fn lsns(records: &[Record]) -> Vec<u64> {
        records.iter().map(|r| r.lsn).collect()
    }

    #[test]
    fn a_full_half_goes_on_in_the_other_one_and_the_scan_reads_across_both() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0).unwrap();
        let end_of_first = fill_half(&mut j, 1);
        assert!(end_of_first > 10, "a half holds many big records");
        assert!(!j.fits(big(0).len()));
        // Nothing is applied, but the second half holds nothing yet.
        assert!(j.turn(0));
        j.append(&big(end_of_first + 1)).unwrap();
        j.append(&big(end_of_first + 2)).unwrap();
        drop(j);
        // Applied up to the middle of the first half: the rest of it, then the second half.
        let (j, records) = Journal::open(dir.path(), 5).unwrap();
        let want: Vec<u64> = (6..=u64::from(end_of_first) + 2).collect();
        assert_eq!(lsns(&records), want);
        assert_eq!(j.last, u64::from(end_of_first) + 2);
        let last = records.last().unwrap();
        assert_eq!(last.messages[0].message_id.as_str(), id(end_of_first + 2));
    }

    #[test]
    fn the_writer_does_not_go_on_in_a_half_holding_unapplied_records() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0).unwrap();
        let a = fill_half(&mut j, 1);
        assert!(j.turn(0));
        let b = fill_half(&mut j, a + 1);
        // The first half's last record is not applied: no turn.
        assert!(!j.turn(u64::from(a) - 1));
        assert!(j.turn(u64::from(a)));
        // The third pass writes over the first half's start; the rest of that half holds
        // older records (applied), which the scan skips.
        j.append(&big(b + 1)).unwrap();
        drop(j);
        let (j, records) = Journal::open(dir.path(), u64::from(a)).unwrap();
        let want: Vec<u64> = (u64::from(a) + 1..=u64::from(b) + 1).collect();
        assert_eq!(lsns(&records), want);
        assert_eq!(j.last, u64::from(b) + 1);
        // A gap ends the records: with the second half's start torn, nothing after it counts.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.path().join(FILE))
            .unwrap();
        file.write_all_at(b"#", HALF + HEADER as u64 + 10).unwrap();
        let (_, records) = Journal::open(dir.path(), u64::from(a)).unwrap();
        assert!(records.is_empty(), "{:?}", lsns(&records));
    }

    #[test]
    fn a_half_filled_to_its_last_byte_is_left_only_by_turning() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0).unwrap();
        // Records exactly as long as a half (payloads that are not JSON: nothing is scanned).
        let whole = vec![b'x'; (HALF as usize) - HEADER];
        j.append(&whole).unwrap();
        assert!(
            !j.fits(0),
            "not in the first half, nor in the second without a turn"
        );
        assert!(j.turn(0), "the second half holds nothing");
        j.append(&whole).unwrap();
        assert!(!j.fits(0));
        // The first half holds record 1: the writer goes back there once it is applied.
        assert!(!j.turn(0));
        assert!(j.turn(1));
        assert!(j.fits(100));
    }

    #[test]
    fn after_a_failed_write_the_scan_reads_the_second_copy_of_its_number_first() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 0).unwrap();
        for n in 1..=2 {
            j.append(&encode(&[message(n)], false)).unwrap();
        }
        // A write of record 3 that failed after its bytes reached the disk (as a failed
        // `fdatasync` may leave it): the bytes are there, the journal's state says failed.
        let lost = frame(3, &encode(&[message(9_999)], false));
        j.file.write_all_at(&lost, j.offset).unwrap();
        j.unsure = true;
        // The other half is free, but the second copy of 3 must not go there: the scan
        // reads this half first and would take the lost copy.
        assert!(!j.turn(2));
        // Everything is applied, so the writer goes back to the start instead.
        j.rewind();
        j.append(&encode(&[message(3)], false)).unwrap();
        assert!(!j.unsure);
        drop(j);
        let (_, records) = Journal::open(dir.path(), 2).unwrap();
        assert_eq!(ids(&records), [(3, vec![id(3)])]);
    }

    /// A crash after the flush and before the apply: the records come back at open, into
    /// SQLite once (a second open finds them applied), with their outbox entries.
    #[tokio::test]
    async fn records_a_crash_left_unapplied_are_in_the_store_after_open_once() {
        use crate::store::embedded::EmbeddedStore;
        use crate::store::{MessageStore, OutboxConfig};
        let dir = tempfile::tempdir().unwrap();
        let outbox = Some(OutboxConfig { max_pending: 100 });
        // The store's files exist (as after a first run); then two records are flushed and
        // the process "dies" before its apply thread writes them.
        EmbeddedStore::open_with(dir.path(), outbox)
            .await
            .unwrap()
            .close()
            .await;
        let (mut j, none) = Journal::open(dir.path(), 0).unwrap();
        assert!(none.is_empty());
        j.append(&encode(&[message(1), message(2)], true)).unwrap();
        j.append(&encode(&[message(3)], true)).unwrap();
        drop(j);
        let room = RoomId::parse("r1").unwrap();
        for _ in 0..2 {
            let store = EmbeddedStore::open_with(dir.path(), outbox).await.unwrap();
            let history = store.history(&room, 10, None).await.unwrap();
            let got: Vec<_> = history.iter().map(|m| m.message_id.as_str()).collect();
            assert_eq!(got, [id(1), id(2), id(3)]);
            assert_eq!(store.outbox_pending(10).await.unwrap().len(), 3);
            store.close().await;
        }
    }
}
