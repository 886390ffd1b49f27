//! The scan contract (the operator's commands): `append_all` keeps its order, `scan` walks a
//! room from the start in small pages (across messages that share one millisecond), `count`,
//! `room_ids` lists rooms with a record and rooms with only messages, in id order.

use super::{Run, message, texts};
use crate::domain::{NewRoom, RoomId, RoomType};
use crate::store::{MessageStore, StoreError};

pub async fn scans(store: &dyn MessageStore, run: &Run) {
    let (room, user) = (run.room("scan"), run.user("scanner"));
    let sent: Vec<_> = (0..250)
        .map(|i| message(&room, &user, &format!("s{i}"), None))
        .collect();
    let stored = store.append_all(sent).await.expect("append_all");
    let want: Vec<String> = (0..250).map(|i| format!("s{i}")).collect();
    assert_eq!(
        texts(&stored.iter().map(|a| a.message.clone()).collect::<Vec<_>>()),
        want
    );
    let mut walked = Vec::new();
    loop {
        let after = walked
            .last()
            .map(|m: &crate::domain::Message| m.message_id.clone());
        let page = store.scan(&room, after.as_ref(), 7).await.expect("scan");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7, "scan: a page holds at most `limit`");
        walked.extend(page);
    }
    assert_eq!(
        texts(&walked),
        want,
        "scan: every message once, in room order"
    );
    assert_eq!(store.count(&room).await.expect("count"), 250, "count");
    let unknown = run.room("scan-none");
    assert!(
        store
            .scan(&unknown, None, 10)
            .await
            .expect("scan")
            .is_empty()
    );
    assert_eq!(store.count(&unknown).await.expect("count"), 0);
    let not_there = message(&room, &user, "x", None).message_id;
    assert!(
        matches!(
            store.scan(&room, Some(&not_there), 10).await,
            Err(StoreError::UnknownCursor)
        ),
        "scan: an unknown cursor"
    );

    // A room with a record and no message is listed too, and the ids come in id order.
    let empty = run.room("scan-empty");
    store
        .create_room(NewRoom {
            room_id: empty.clone(),
            room_type: RoomType::Group,
            participants: vec![user.clone()],
        })
        .await
        .expect("create a room");
    let mut ids: Vec<RoomId> = Vec::new();
    loop {
        let page = store.room_ids(ids.last(), 2).await.expect("room_ids");
        if page.is_empty() {
            break;
        }
        ids.extend(page);
    }
    let strs: Vec<&str> = ids.iter().map(RoomId::as_str).collect();
    let mut sorted = strs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(strs, sorted, "room_ids: in id order, each once");
    assert!(strs.contains(&room.as_str()) && strs.contains(&empty.as_str()));
}
