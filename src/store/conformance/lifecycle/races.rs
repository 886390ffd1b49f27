//! Changes racing on one message, also from two instances of a shared backend.

use std::collections::HashSet;
use std::sync::Arc;

use super::{apply, get, post, react};
use crate::domain::{MAX_REACTIONS_PER_MESSAGE, RoomEvent};
use crate::store::conformance::{Backend, Run};
use crate::store::{MessageStore, StoreError};

/// Changes racing on one message (from two instances of a shared backend): every reaction
/// of distinct users counts once, the change log has one entry each, the `rev`s are
/// distinct, and no more than `MAX_REACTIONS_PER_MESSAGE` distinct emoji get in.
pub async fn racing_changes(backend: &dyn Backend, run: &Run) {
    let one = backend.open(None).await.expect("open");
    let two = if backend.shared() {
        backend.open(None).await.expect("open a second instance")
    } else {
        one.clone()
    };
    let room = run.room("race");
    let author = run.user("ra0");
    let anchor = post(&*one, &room, &author, "anchor").await;
    let m = anchor.message_id.clone();
    const USERS: usize = 24;
    let tasks = (0..USERS).map(|i| {
        let store: Arc<dyn MessageStore> = if i % 2 == 0 { one.clone() } else { two.clone() };
        let (room, m, user) = (room.clone(), m.clone(), run.user(&format!("racer{i}")));
        tokio::spawn(async move {
            // Everyone on one emoji, and each on an emoji of its own (only 19 more fit).
            let shared = apply(&*store, &room, &m, &user, react("🏁", true)).await;
            let own = apply(&*store, &room, &m, &user, react(&format!("own{i}"), true)).await;
            (shared, own)
        })
    });
    let mut revs = HashSet::new();
    let (mut own_ok, mut own_refused) = (0, 0);
    for t in futures::future::join_all(tasks).await {
        let (shared, own) = t.expect("racer");
        let shared = shared.expect("a reaction on a shown emoji");
        assert!(shared.effective);
        assert!(
            revs.insert(shared.message.rev),
            "lifecycle: racing changes get distinct revs"
        );
        match own {
            Ok(c) => {
                own_ok += 1;
                assert!(revs.insert(c.message.rev), "lifecycle: distinct revs");
            }
            Err(StoreError::TooManyReactions) => own_refused += 1,
            Err(e) => panic!("lifecycle: racing reaction failed: {e}"),
        }
    }
    assert_eq!(
        (own_ok, own_refused),
        (
            MAX_REACTIONS_PER_MESSAGE - 1,
            USERS + 1 - MAX_REACTIONS_PER_MESSAGE
        ),
        "lifecycle: racing reactions respect the bound"
    );
    let now = get(&*one, &room, &m).await;
    assert_eq!(now.reactions.len(), MAX_REACTIONS_PER_MESSAGE);
    assert_eq!(
        now.reactions
            .iter()
            .find(|r| r.emoji.as_str() == "🏁")
            .map(|r| r.count),
        Some(USERS as u64),
        "lifecycle: racing reactions each count once"
    );
    let log = one
        .changes_since(&room, &m, 1000)
        .await
        .expect("changes_since")
        .expect("known");
    assert_eq!(
        log.len(),
        USERS + MAX_REACTIONS_PER_MESSAGE - 1,
        "lifecycle: one log entry per effective racing change"
    );
    // The logged counts of the shared emoji are 1..=USERS in log order.
    let counts: Vec<u64> = log
        .iter()
        .filter_map(|e| match e {
            RoomEvent::Reaction { emoji, count, .. } if emoji.as_str() == "🏁" => Some(*count),
            _ => None,
        })
        .collect();
    assert_eq!(
        counts,
        (1..=USERS as u64).collect::<Vec<_>>(),
        "lifecycle: the log replays the counts in order"
    );
    one.close().await;
    if backend.shared() {
        two.close().await;
    }
}
