//! The REST paths of SPEC 10.

use serde_json::json;

use super::{history, rest};
use crate::support::{spawn_app, unique};

#[tokio::test]
async fn rest_paths_of_the_lifecycle() {
    let app = spawn_app().await;
    let room = unique("rest-life");
    let (ua, ub) = (unique("ann"), unique("bob"));
    let mut a = app.member(&ua, &room).await;
    let mut b = app.member(&ub, &room).await;
    let m1 = a.say(&room, "typo").await["messageId"].clone();
    let id = m1.as_str().unwrap();

    let (s, body) = rest(
        &app,
        "PATCH",
        &format!("/api/chat/{room}/messages/{id}"),
        &ua,
        Some(json!({"message": "fixed"})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(b.event("message_edited").await["message"], "fixed");
    let (s, body) = rest(
        &app,
        "PATCH",
        &format!("/api/chat/{room}/messages/{id}"),
        &ub,
        Some(json!({"message": "mine"})),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
    let (s, _) = rest(
        &app,
        "PATCH",
        &format!("/api/chat/{room}/messages/{id}"),
        &ua,
        Some(json!({"text": "x"})),
    )
    .await;
    assert_eq!(s, 400);
    let outsider = unique("eve");
    let (s, _) = rest(
        &app,
        "PUT",
        &format!("/api/chat/{room}/messages/{id}/reactions/%F0%9F%8E%89"),
        &outsider,
        None,
    )
    .await;
    assert_eq!(s, 403, "only members act in a room");

    let (s, body) = rest(
        &app,
        "PUT",
        &format!("/api/chat/{room}/messages/{id}/reactions/%F0%9F%8E%89"),
        &ub,
        None,
    )
    .await;
    assert_eq!((s, body["count"].clone()), (200, json!(1)), "{body}");
    let e = a.event("reaction_updated").await;
    assert_eq!(
        (e["emoji"].clone(), e["added"].clone()),
        (json!("🎉"), json!(true))
    );
    let (s, body) = rest(
        &app,
        "DELETE",
        &format!("/api/chat/{room}/messages/{id}/reactions/%F0%9F%8E%89"),
        &ub,
        None,
    )
    .await;
    assert_eq!((s, body["count"].clone()), (200, json!(0)), "{body}");
    let (s, _) = rest(
        &app,
        "PUT",
        &format!("/api/chat/{room}/messages/{id}/reactions/a%20b"),
        &ub,
        None,
    )
    .await;
    assert_eq!(s, 400);

    let (s, body) = rest(
        &app,
        "POST",
        &format!("/api/chat/{room}/read"),
        &ub,
        Some(json!({"messageId": m1})),
    )
    .await;
    assert_eq!((s, body["messageId"].clone()), (200, m1.clone()), "{body}");
    assert_eq!(a.event("read_receipt").await["userId"], ub.as_str());
    let (s, body) = rest(
        &app,
        "GET",
        &format!("/api/chat/{room}/receipts"),
        &ua,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["receipts"][0]["messageId"], m1);
    let (s, _) = rest(
        &app,
        "POST",
        &format!("/api/chat/{room}/read"),
        &ub,
        Some(json!({"messageId": "65a1b2c3d4e5f60718293a4b"})),
    )
    .await;
    assert_eq!(s, 404);

    let (s, body) = rest(
        &app,
        "DELETE",
        &format!("/api/chat/{room}/messages/{id}"),
        &ua,
        None,
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(b.event("message_deleted").await["messageId"], m1);
    assert_eq!(history(&app, &room).await[0]["message"], "");
    // Without an identity: 401.
    let (s, _) = app
        .post(
            &format!("/api/chat/{room}/read"),
            &json!({"messageId": m1}),
            &[],
        )
        .await;
    assert_eq!(s, 401);
}
