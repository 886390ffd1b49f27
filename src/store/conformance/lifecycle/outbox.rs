//! The outbox entries of edits and deletes; the deleted text gone from the raw data.

use super::{apply, apply_at, edit, get, marker, post, react, reaction};
use crate::domain::{ChangeKind, MessageId, now_ms};
use crate::store::conformance::{Backend, Run};
use crate::store::{MessageStore, OutboxConfig, OutboxEntry, OutboxEvent, StoreError};

/// The entries of these messages among the pending ones.
async fn entries_of(store: &dyn MessageStore, ids: &[&MessageId]) -> Vec<OutboxEntry> {
    store
        .outbox_pending(100_000)
        .await
        .expect("outbox_pending")
        .into_iter()
        .filter(|e| ids.contains(&&e.message_id))
        .collect()
}

/// Outbox (SPEC 10): an effective edit or delete writes exactly one entry of its event
/// (receivers: the participants but the author), a delete blanks the text of the message's
/// pending entries, repeats and reactions and read markers write none, a full outbox refuses
/// an edit (and changes nothing); the deleted text is gone from the backend's raw data; the
/// changes survive a restart.
pub async fn lifecycle_outbox(backend: &dyn Backend, run: &Run) {
    let unbounded = Some(OutboxConfig {
        max_pending: u64::MAX,
    });
    let store = backend.open(unbounded).await.expect("open with outbox");
    let room = run.room("life-outbox");
    let (a, b, c) = (run.user("xa"), run.user("xb"), run.user("xc"));
    for u in [&a, &b, &c] {
        store.add_member(&room, u).await.expect("add_member");
    }
    let secret = format!("{}-secret-text", run.room("s"));
    let m = post(&*store, &room, &a, &format!("{secret} as sent")).await;
    let other = post(&*store, &room, &b, "stays").await;
    assert!(
        backend.raw_contains(&format!("{secret} as sent")).await,
        "lifecycle: raw_contains finds a stored text"
    );
    let sent = entries_of(&*store, &[&m.message_id]).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].event, OutboxEvent::Sent);

    let t_edit = now_ms();
    let edited_text = format!("{secret} as edited");
    apply_at(
        &*store,
        &room,
        &m.message_id,
        &a,
        edit(&edited_text),
        t_edit,
    )
    .await
    .expect("edit");
    let entries = entries_of(&*store, &[&m.message_id]).await;
    assert_eq!(
        entries.len(),
        2,
        "lifecycle: an edit writes one entry: {entries:?}"
    );
    let e = &entries[1];
    assert!(
        e.seq > sent[0].seq,
        "lifecycle: the edit's entry comes after the message's"
    );
    assert_eq!(
        (
            e.event,
            e.message.as_str(),
            e.timestamp,
            &e.sender_id,
            &e.room_id
        ),
        (OutboxEvent::Edited, edited_text.as_str(), t_edit, &a, &room),
        "lifecycle: the edit's entry"
    );
    assert_eq!(
        e.receiver_ids,
        vec![b.clone(), c.clone()],
        "lifecycle: receivers: all but the author"
    );
    assert_eq!(e.receiver_id, None);

    // Reactions, read markers, refusals write no entry.
    apply(&*store, &room, &m.message_id, &b, react("👍", true))
        .await
        .expect("react");
    store
        .mark_read(marker(&room, &b, &m.message_id, now_ms()))
        .await
        .expect("mark_read");
    assert!(
        apply(&*store, &room, &m.message_id, &b, ChangeKind::Delete)
            .await
            .is_err()
    );
    assert_eq!(entries_of(&*store, &[&m.message_id]).await.len(), 2);

    let t_delete = now_ms();
    apply_at(
        &*store,
        &room,
        &m.message_id,
        &a,
        ChangeKind::Delete,
        t_delete,
    )
    .await
    .expect("delete");
    let entries = entries_of(&*store, &[&m.message_id]).await;
    assert_eq!(
        entries.len(),
        3,
        "lifecycle: a delete writes one entry: {entries:?}"
    );
    let d = &entries[2];
    assert_eq!(
        (d.event, d.message.as_str(), d.timestamp, &d.sender_id),
        (OutboxEvent::Deleted, "", t_delete, &a),
        "lifecycle: the delete's entry"
    );
    assert_eq!(d.receiver_ids, vec![b.clone(), c.clone()]);
    assert_eq!(
        entries.iter().map(|e| e.event).collect::<Vec<_>>(),
        [OutboxEvent::Sent, OutboxEvent::Edited, OutboxEvent::Deleted]
    );
    assert!(
        entries.iter().all(|e| e.message.is_empty()),
        "lifecycle: a delete blanks the text of the message's pending entries: {entries:?}"
    );
    apply(&*store, &room, &m.message_id, &a, ChangeKind::Delete)
        .await
        .expect("delete again");
    assert_eq!(
        entries_of(&*store, &[&m.message_id]).await.len(),
        3,
        "lifecycle: a repeated delete writes no entry"
    );
    for text in [format!("{secret} as sent"), edited_text.clone()] {
        assert!(
            !backend.raw_contains(&text).await,
            "lifecycle: the deleted text {text:?} is gone from the backend's raw data"
        );
    }
    assert!(backend.raw_contains("stays").await);

    // In a room of two, the single receiver is the other participant.
    let pair = run.room("life-pair");
    store.add_member(&pair, &a).await.expect("add_member");
    store.add_member(&pair, &b).await.expect("add_member");
    let p = post(&*store, &pair, &b, "to a").await;
    apply(&*store, &pair, &p.message_id, &b, edit("to a, edited"))
        .await
        .expect("edit");
    let pe = entries_of(&*store, &[&p.message_id]).await;
    assert_eq!(pe.len(), 2);
    assert_eq!(
        (pe[1].receiver_id.as_ref(), &pe[1].receiver_ids),
        (Some(&a), &vec![a.clone()])
    );

    // Drain what this property wrote.
    let mine = entries_of(&*store, &[&m.message_id, &p.message_id, &other.message_id]).await;
    let seqs: Vec<u64> = mine.iter().map(|e| e.seq).collect();
    store.outbox_mark_sent(&seqs).await.expect("mark_sent");
    store.close().await;

    // The changes survive a restart.
    let store = backend.open(None).await.expect("reopen");
    let kept = get(&*store, &room, &m.message_id).await;
    assert!(
        kept.deleted && kept.message.as_str().is_empty(),
        "lifecycle: a tombstone survives a restart"
    );
    assert_eq!(kept.reactions, vec![reaction("👍", &[&b])]);
    assert_eq!(
        get(&*store, &pair, &p.message_id).await.message.as_str(),
        "to a, edited",
        "lifecycle: an edit survives a restart"
    );
    assert_eq!(
        store.receipts(&room).await.expect("receipts").len(),
        1,
        "lifecycle: read markers survive a restart"
    );
    // Without the outbox, changes write no entries.
    let q = post(&*store, &pair, &a, "quiet").await;
    apply(&*store, &pair, &q.message_id, &a, edit("quiet, edited"))
        .await
        .expect("edit");
    apply(&*store, &pair, &q.message_id, &a, ChangeKind::Delete)
        .await
        .expect("delete");
    store.close().await;
    let store = backend.open(unbounded).await.expect("reopen with outbox");
    assert!(
        entries_of(&*store, &[&q.message_id]).await.is_empty(),
        "lifecycle: a store without the outbox writes no change entries"
    );
    store.close().await;

    // A full outbox refuses an edit or delete, which then changes nothing; a reaction (no
    // entry) still goes through.
    let full = backend
        .open(Some(OutboxConfig { max_pending: 1 }))
        .await
        .expect("open bounded");
    let r = post(&*full, &pair, &a, "fills the outbox").await;
    let got = apply(&*full, &pair, &r.message_id, &a, edit("refused")).await;
    assert!(
        matches!(got, Err(StoreError::OutboxFull(_))),
        "lifecycle: a full outbox refuses an edit: {got:?}"
    );
    let got = apply(&*full, &pair, &r.message_id, &a, ChangeKind::Delete).await;
    assert!(
        matches!(got, Err(StoreError::OutboxFull(_))),
        "lifecycle: a full outbox refuses a delete: {got:?}"
    );
    let now = get(&*full, &pair, &r.message_id).await;
    assert_eq!(
        (now.message.as_str(), now.edited_at, now.deleted),
        ("fills the outbox", None, false),
        "lifecycle: a refused edit or delete changes nothing"
    );
    apply(&*full, &pair, &r.message_id, &b, react("👍", true))
        .await
        .expect("a reaction needs no outbox entry");
    let left = entries_of(&*full, &[&r.message_id]).await;
    assert_eq!(left.len(), 1);
    full.outbox_mark_sent(&[left[0].seq])
        .await
        .expect("mark_sent");
    full.close().await;
}
