//! Rooms: created by a first message or a join (open groups), private rooms, direct pairs,
//! members, `lastMessage`, the rooms of a participant.

use super::{Run, message};
use crate::domain::{NewRoom, RoomType};
use crate::store::{MessageStore, StoreError};

/// Rooms: created by a first message or a join (open group), private rooms through
/// `create_room` (direct pairs unique), members, `lastMessage`, listing per participant.
pub async fn rooms_and_participants(store: &dyn MessageStore, run: &Run) {
    let (a, b, c) = (run.user("ra"), run.user("rb"), run.user("rc"));
    assert!(
        store
            .get_room(&run.room("nowhere"))
            .await
            .expect("get_room")
            .is_none(),
        "rooms: an unknown room is None"
    );

    let open = run.room("open");
    store.add_member(&open, &a).await.expect("add_member");
    store.add_member(&open, &b).await.expect("add_member");
    store.add_member(&open, &a).await.expect("add_member again");
    let room = store
        .get_room(&open)
        .await
        .expect("get_room")
        .expect("joined room exists");
    assert_eq!(
        room.room_type,
        RoomType::Group,
        "rooms: a joined room is a group"
    );
    assert!(!room.private, "rooms: a joined room is open");
    assert_eq!(
        room.participants,
        vec![a.clone(), b.clone()],
        "rooms: members, sorted, once"
    );
    assert!(room.last_message.is_none());

    let sent = message(&open, &b, "last words", None);
    store.append(sent.clone()).await.expect("append");
    let room = store
        .get_room(&open)
        .await
        .expect("get_room")
        .expect("room");
    let last = room
        .last_message
        .expect("rooms: lastMessage after a message");
    assert_eq!(last.content.as_str(), "last words");
    assert_eq!(last.sender_id, b);
    assert_eq!(last.timestamp, sent.timestamp);
    assert!(
        room.updated_at >= sent.timestamp,
        "rooms: updatedAt follows the message"
    );

    let implicit = run.room("implicit");
    store
        .append(message(&implicit, &c, "first", None))
        .await
        .expect("append");
    let room = store
        .get_room(&implicit)
        .await
        .expect("get_room")
        .expect("room");
    assert_eq!(
        room.room_type,
        RoomType::Group,
        "rooms: a first message creates a group"
    );
    assert!(!room.private);

    let direct = NewRoom::new(
        run.room("direct"),
        RoomType::Direct,
        vec![c.clone(), a.clone()],
    )
    .expect("new room");
    let (created, new) = store
        .create_room(direct.clone())
        .await
        .expect("create_room");
    assert!(new, "rooms: created");
    assert!(created.private, "rooms: created rooms are private");
    assert_eq!(created.room_type, RoomType::Direct);
    assert_eq!(created.participants, vec![a.clone(), c.clone()]);
    let again = NewRoom::new(
        run.room("direct-2"),
        RoomType::Direct,
        vec![a.clone(), c.clone()],
    )
    .expect("new room");
    let (existing, new) = store.create_room(again).await.expect("create_room again");
    assert!(!new, "rooms: one direct room per pair");
    assert_eq!(existing.room_id, direct.room_id);
    let taken =
        NewRoom::new(direct.room_id.clone(), RoomType::Group, vec![b.clone()]).expect("new room");
    assert!(
        matches!(store.create_room(taken).await, Err(StoreError::RoomExists)),
        "rooms: a taken room id is RoomExists"
    );

    // a takes part in `open` (last active above) and `direct`; make `direct` the most recent.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store
        .append(message(&direct.room_id, &a, "newest", None))
        .await
        .expect("append");
    let rooms = store.rooms_of(&a).await.expect("rooms_of");
    let ids: Vec<_> = rooms.iter().map(|r| r.room_id.clone()).collect();
    assert_eq!(
        ids,
        vec![direct.room_id.clone(), open.clone()],
        "rooms: rooms of a participant, most recently active first"
    );
    assert_eq!(rooms[0].participants, vec![a.clone(), c.clone()]);
    let of_c: Vec<_> = store
        .rooms_of(&c)
        .await
        .expect("rooms_of")
        .into_iter()
        .map(|r| r.room_id)
        .collect();
    assert_eq!(
        of_c.len(),
        1,
        "rooms: a sender is not a participant of an open room it never joined"
    );
    assert!(
        store
            .rooms_of(&run.user("nobody"))
            .await
            .expect("rooms_of")
            .is_empty()
    );
}
