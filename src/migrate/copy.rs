//! `migrate`: every room of the source, one after the other: its room record, its messages a
//! page at a time (appended in room order, then brought to their source's state), its read
//! markers; then the count check (messages per room in source and target), with a repair walk
//! of any room the target holds fewer messages of. See `migrate` for why a re-run copies
//! nothing twice.

use std::collections::HashMap;
use std::fmt::Write as _;

use futures::{StreamExt, stream};

use super::state::{as_appended, converge, has_state};
use super::{PAGE, Progress, Quiet, ROOM_PAGE};
use crate::domain::{Message, MessageId, NewRoom, RoomId};
use crate::store::{MessageStore, StoreError};

/// Changes applied at once (each one is a write of its own).
const CHANGES_IN_FLIGHT: usize = 32;

/// One room's messages in source and target after the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomCount {
    pub room: RoomId,
    pub source: u64,
    pub target: u64,
}

/// What a `migrate` did.
#[derive(Debug, Default)]
pub struct Report {
    /// Messages appended to the target.
    pub copied: u64,
    /// Messages the target held already (a re-run, or an idempotent client message id).
    pub skipped: u64,
    /// Edits, reactions and deletes applied to the target's copies.
    pub changes: u64,
    /// Read markers that moved in the target.
    pub markers: u64,
    /// Messages per room, in room id order.
    pub counts: Vec<RoomCount>,
}

impl Report {
    /// The rooms whose counts differ.
    pub fn mismatches(&self) -> Vec<&RoomCount> {
        self.counts
            .iter()
            .filter(|c| c.source != c.target)
            .collect()
    }

    /// The count check as a table: room, source, target, `ok` or `MISMATCH`.
    pub fn table(&self) -> String {
        let width = self
            .counts
            .iter()
            .map(|c| c.room.as_str().len())
            .chain([4])
            .max()
            .unwrap_or(4);
        let mut out = format!("{:<width$}  {:>10}  {:>10}\n", "room", "source", "target");
        for c in &self.counts {
            let verdict = if c.source == c.target {
                "ok"
            } else {
                "MISMATCH"
            };
            let _ = writeln!(
                out,
                "{:<width$}  {:>10}  {:>10}  {verdict}",
                c.room.as_str(),
                c.source,
                c.target
            );
        }
        let (s, t) = self
            .counts
            .iter()
            .fold((0, 0), |(s, t), c| (s + c.source, t + c.target));
        let _ = writeln!(out, "{:<width$}  {s:>10}  {t:>10}", "total");
        out
    }
}

/// Every room id of `store`, in id order.
pub async fn all_room_ids(store: &dyn MessageStore) -> Result<Vec<RoomId>, StoreError> {
    let mut ids = Vec::new();
    loop {
        let page = store.room_ids(ids.last(), ROOM_PAGE).await?;
        let done = page.len() < ROOM_PAGE;
        ids.extend(page);
        if done {
            return Ok(ids);
        }
    }
}

/// Copies every room, message, reaction and read marker of `source` into `target`, then
/// counts each room's messages on both sides. Idempotent and resumable (see `migrate`'s module
/// docs); a count mismatch is in the report, not an error.
pub async fn migrate(
    source: &dyn MessageStore,
    target: &dyn MessageStore,
    progress: &dyn Progress,
) -> Result<Report, StoreError> {
    let rooms = all_room_ids(source).await?;
    let mut totals = Vec::with_capacity(rooms.len());
    for room in &rooms {
        totals.push(source.count(room).await?);
    }
    progress.note(&format!(
        "{} rooms, {} messages in the source",
        rooms.len(),
        totals.iter().sum::<u64>()
    ));
    progress.start(totals.iter().sum());
    let mut report = Report::default();
    for (room, &total) in rooms.iter().zip(&totals) {
        copy_room(source, target, room, total, &mut report, progress).await?;
    }
    progress.finish();
    for room in &rooms {
        let (mut s, mut t) = (source.count(room).await?, target.count(room).await?);
        if t < s {
            // A gap (a batch that failed mid-way in an earlier run): walk the room.
            progress.note(&format!(
                "{room}: {t} of {s} messages in the target, repairing"
            ));
            walk_room(source, target, room, &mut report, &Quiet).await?;
            (s, t) = (source.count(room).await?, target.count(room).await?);
        }
        report.counts.push(RoomCount {
            room: room.clone(),
            source: s,
            target: t,
        });
    }
    Ok(report)
}

async fn copy_room(
    source: &dyn MessageStore,
    target: &dyn MessageStore,
    room: &RoomId,
    total: u64,
    report: &mut Report,
    progress: &dyn Progress,
) -> Result<(), StoreError> {
    copy_room_record(source, target, room).await?;
    let held = target.count(room).await?;
    let tail = target.history(room, PAGE, None).await?;
    let mut page = match tail.last() {
        None => source.scan(room, None, PAGE).await?,
        Some(newest) => match source.scan(room, Some(&newest.message_id), PAGE).await {
            Ok(page) => {
                // The last page an interruption may have left without its states: the
                // source's page that ends with the target's newest message.
                let before = page.first().map(|m| &m.message_id);
                let theirs = source.history(room, PAGE, before).await?;
                report.changes += settle(target, &theirs, &tail).await?;
                report.skipped += held;
                progress.advance(held.min(total));
                page
            }
            Err(StoreError::UnknownCursor) => {
                // The target's newest message is not the source's: walk from the start.
                walk_room(source, target, room, report, progress).await?;
                return copy_markers(source, target, room, report).await;
            }
            Err(e) => return Err(e),
        },
    };
    // The next page is read while this one is written.
    while let Some(end) = page.last().map(|m| m.message_id.clone()) {
        let (written, next) = futures::join!(
            copy_page(target, &page, report),
            source.scan(room, Some(&end), PAGE)
        );
        written?;
        progress.advance(page.len() as u64);
        page = next?;
    }
    copy_markers(source, target, room, report).await
}

/// The room's record: a private room is created with its type and participants (unless the
/// target has it); an open room's members are added (harmless when repeated). A room known
/// only from its messages is created by the first append, as an open group.
async fn copy_room_record(
    source: &dyn MessageStore,
    target: &dyn MessageStore,
    room: &RoomId,
) -> Result<(), StoreError> {
    let Some(record) = source.get_room(room).await? else {
        return Ok(());
    };
    if record.private {
        let mut participants = record.participants.clone();
        participants.sort();
        participants.dedup();
        let new = NewRoom {
            room_id: record.room_id.clone(),
            room_type: record.room_type,
            participants,
        };
        match target.create_room(new).await {
            Ok(_) | Err(StoreError::RoomExists) => Ok(()),
            Err(e) => Err(e),
        }
    } else {
        for user in &record.participants {
            target.add_member(room, user).await?;
        }
        Ok(())
    }
}

/// Appends a page in room order (`append_all`: queued in that order, so the writer commits
/// them in that order), then applies the states of the messages that have any.
async fn copy_page(
    target: &dyn MessageStore,
    page: &[Message],
    report: &mut Report,
) -> Result<(), StoreError> {
    let appended = target
        .append_all(page.iter().map(as_appended).collect())
        .await?;
    let mut stored = Vec::with_capacity(page.len());
    for a in appended {
        if a.duplicate {
            report.skipped += 1;
        } else {
            report.copied += 1;
        }
        stored.push(a.message);
    }
    report.changes += settle(target, page, &stored).await?;
    Ok(())
}

/// Brings every message of `current` (target copies) to the state of the source message with
/// its id in `theirs`; the number of changes applied.
async fn settle(
    target: &dyn MessageStore,
    theirs: &[Message],
    current: &[Message],
) -> Result<u64, StoreError> {
    let by_id: HashMap<&str, &Message> = theirs
        .iter()
        .filter(|m| has_state(m))
        .map(|m| (m.message_id.as_str(), m))
        .collect();
    let pairs: Vec<(&Message, &Message)> = current
        .iter()
        .filter_map(|c| by_id.get(c.message_id.as_str()).map(|s| (*s, c)))
        .collect();
    let applied: Vec<Result<u64, StoreError>> = stream::iter(pairs)
        .map(|(s, c)| converge(target, s, c))
        .buffer_unordered(CHANGES_IN_FLIGHT)
        .collect()
        .await;
    applied.into_iter().sum()
}

/// Walks every message of the room: appends the ones the target lacks (in room order) and
/// brings the others to their source's state. For a target that holds messages of its own,
/// or a gap.
async fn walk_room(
    source: &dyn MessageStore,
    target: &dyn MessageStore,
    room: &RoomId,
    report: &mut Report,
    progress: &dyn Progress,
) -> Result<(), StoreError> {
    let mut last: Option<MessageId> = None;
    loop {
        let page = source.scan(room, last.as_ref(), PAGE).await?;
        let Some(end) = page.last() else { break };
        last = Some(end.message_id.clone());
        let held: Vec<Result<Option<Message>, StoreError>> = stream::iter(&page)
            .map(|m| target.get_message(room, &m.message_id))
            .buffered(CHANGES_IN_FLIGHT)
            .collect()
            .await;
        let mut missing = Vec::new();
        let mut present = Vec::new();
        for (m, h) in page.iter().zip(held) {
            match h? {
                Some(copy) => present.push(copy),
                None => missing.push(m.clone()),
            }
        }
        report.skipped += present.len() as u64;
        report.changes += settle(target, &page, &present).await?;
        copy_page(target, &missing, report).await?;
        progress.advance(page.len() as u64);
    }
    Ok(())
}

/// The room's read markers (a marker never moves backwards, so a repeat changes nothing; one
/// naming a message the target lacks is left out).
async fn copy_markers(
    source: &dyn MessageStore,
    target: &dyn MessageStore,
    room: &RoomId,
    report: &mut Report,
) -> Result<(), StoreError> {
    for marker in source.receipts(room).await? {
        match target.mark_read(marker).await {
            Ok(m) if m.moved => report.markers += 1,
            Ok(_) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
