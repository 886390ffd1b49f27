//! A `since` resume replays what changed while the client was away.

use serde_json::{Value, json};

use super::{CHANGES, c_delete, edit, history, react};
use crate::support::{spawn_app, unique};

#[tokio::test]
async fn a_resume_replays_what_changed_and_the_view_equals_rest_history() {
    let app = spawn_app().await;
    let room = unique("resume");
    let (ua, ub) = (unique("ann"), unique("bob"));
    let mut a = app.member(&ua, &room).await;
    let mut b = app.member(&ub, &room).await;
    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        ids.push(a.say(&room, text).await["messageId"].clone());
    }
    let mut view: Vec<Value> = Vec::new();
    for _ in 0..3 {
        view.push(b.event("new_message").await);
    }
    let last = ids[2].clone();
    b.disconnect();
    b.closed().await;

    // While Bob is away: an edit, a delete, reactions, and a new message.
    assert_eq!(edit(&mut a, &room, &ids[0], "uno").await["success"], true);
    assert_eq!(c_delete(&mut a, &room, &ids[1]).await["success"], true);
    assert_eq!(
        react(&mut a, "add_reaction", &room, &ids[2], "🔥").await["count"],
        1
    );
    assert_eq!(
        react(&mut a, "add_reaction", &room, &ids[0], "👀").await["count"],
        1
    );
    assert_eq!(
        react(&mut a, "remove_reaction", &room, &ids[0], "👀").await["count"],
        0
    );
    a.say(&room, "four").await;

    let mut b = app.user(&ub).await;
    let ack = b
        .emit_ack("join_room", json!({"roomId": room, "since": last}))
        .await;
    assert_eq!(ack["success"], true);
    let (name, missed) = b
        .next_of(&[
            "message_history",
            "message_edited",
            "message_deleted",
            "reaction_updated",
        ])
        .await;
    assert_eq!(name, "message_history", "history comes first");
    assert_eq!(missed.as_array().unwrap().len(), 1);
    assert_eq!(missed[0]["message"], "four");
    let mut kinds = Vec::new();
    for _ in 0..5 {
        let (name, e) = b.next_of(&CHANGES).await;
        kinds.push(name.clone());
        let i = view
            .iter()
            .position(|m| m["messageId"] == e["messageId"])
            .expect("a change of a message Bob had");
        let m = &mut view[i];
        match name.as_str() {
            "message_edited" => {
                m["message"] = e["message"].clone();
                m["editedAt"] = e["editedAt"].clone();
            }
            "message_deleted" => {
                m["message"] = json!("");
                m["deleted"] = json!(true);
            }
            _ => {
                let reactions = m
                    .as_object_mut()
                    .unwrap()
                    .entry("reactions")
                    .or_insert(json!([]))
                    .as_array_mut()
                    .unwrap();
                reactions.retain(|r| r["emoji"] != e["emoji"]);
                if e["count"].as_u64().unwrap() > 0 {
                    reactions.push(
                        json!({"emoji": e["emoji"], "count": e["count"], "userIds": [e["userId"]]}),
                    );
                }
            }
        }
    }
    assert_eq!(
        kinds,
        [
            "message_edited",
            "message_deleted",
            "reaction_updated",
            "reaction_updated",
            "reaction_updated"
        ]
    );
    for m in &mut view {
        m.as_object_mut()
            .unwrap()
            .entry("reactions")
            .or_insert(json!([]));
    }
    view.extend(missed.as_array().unwrap().iter().cloned());
    assert_eq!(json!(view), json!(history(&app, &room).await));
}
