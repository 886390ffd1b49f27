//! The operator's page (issue 18.3): off without `ADMIN_TOKEN`; `GET /admin/api/stats` refuses
//! a missing or wrong token with 401 and SPEC 2's error body; the figures follow a scripted
//! chat; instances on one (real) Redis see each other, a stopped one drops off (at once when it
//! withdraws, after its report's TTL when it dies). The page itself runs in Chromium in
//! `e2e/browser/admin.test.mjs`.

use std::time::Duration;

use serde_json::Value;

use crate::metrics::scrape;
use crate::support::{
    Endpoint, eventually, keys, own_key, redis, spawn_app, spawn_app_with, spawn_redis_app, unique,
};

const TOKEN: &str = "operator-t0ken-for-tests";
/// Reports come every 2 s; a loaded machine may take a few samples to show a change.
const SAMPLED: Duration = Duration::from_secs(15);
/// A dead instance's report lives 10 s after its last sample.
const EXPIRED: Duration = Duration::from_secs(25);

async fn stats(app: &Endpoint) -> Value {
    let (status, body) = app
        .get_with(
            "/admin/api/stats",
            &[("authorization", &format!("Bearer {TOKEN}"))],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The report of `instance` in a view (`Value::Null` when the view does not list it).
fn report<'a>(view: &'a Value, instance: &str) -> &'a Value {
    view["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|r| r["instanceId"] == instance)
        .unwrap_or(&Value::Null)
}

fn listed(view: &Value, instance: &str) -> bool {
    !report(view, instance).is_null()
}

/// The `instance_id` label of an instance's `/metrics`.
async fn metrics_instance(app: &Endpoint) -> String {
    let text = scrape(app).await;
    text.lines()
        .find_map(|l| l.split("instance_id=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .expect("instance_id label")
        .to_string()
}

async fn status_of(app: &Endpoint, path: &str, headers: &[(&str, &str)]) -> u16 {
    app.get_with(path, headers).await.0
}

#[tokio::test]
async fn the_page_is_off_without_admin_token() {
    let app = spawn_app().await;
    let bearer = format!("Bearer {TOKEN}");
    for path in [
        "/admin",
        "/admin/",
        "/admin/admin.js",
        "/admin/admin.css",
        "/admin/api/stats",
    ] {
        assert_eq!(status_of(&app, path, &[]).await, 404, "{path}");
        assert_eq!(
            status_of(&app, path, &[("authorization", &bearer)]).await,
            404,
            "{path} with a token"
        );
    }
    // An empty ADMIN_TOKEN is no token.
    let app = spawn_app_with(&["--admin-token", ""]).await;
    assert_eq!(status_of(&app, "/admin/api/stats", &[]).await, 404);
}

#[tokio::test]
async fn a_missing_or_wrong_token_gets_401() {
    let app = spawn_app_with(&["--admin-token", TOKEN]).await;
    let wrong = [
        vec![],
        vec![("authorization", "Bearer wrong-token".to_string())],
        vec![("authorization", format!("Bearer {TOKEN}x"))],
        vec![("authorization", format!("Bearer {}", &TOKEN[1..]))],
        vec![("authorization", format!("Basic {TOKEN}"))],
        vec![("authorization", TOKEN.to_string())],
        vec![("x-admin-token", TOKEN.to_string())],
    ];
    for headers in &wrong {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let res = headers
            .iter()
            .fold(
                reqwest::Client::new().get(app.url("/admin/api/stats")),
                |req, (k, v)| req.header(*k, *v),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 401, "{headers:?}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body: Value = res.json().await.unwrap();
        assert_eq!(keys(&body), ["error", "success"], "{body}");
        assert_eq!(body["success"], false);
        assert_eq!(keys(&body["error"]), ["code", "message"]);
        assert_eq!(body["error"]["code"], "auth_failed");
        assert!(!body.to_string().contains(TOKEN));
    }
    // The token is taken from the header only, never from the URL.
    let (status, _) = app.get(&format!("/admin/api/stats?token={TOKEN}")).await;
    assert_eq!(status, 401);

    // The right one.
    let res = reqwest::Client::new()
        .get(app.url("/admin/api/stats"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");

    // The page and its assets hold no figures: served without the token, never containing it.
    let page = reqwest::get(app.url("/admin")).await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("/admin/admin.js") && !html.contains(TOKEN));
    for (path, kind) in [
        ("/admin/admin.js", "application/javascript"),
        ("/admin/admin.css", "text/css"),
    ] {
        let res = reqwest::get(app.url(path)).await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "{path}");
        let content_type = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        // Served locally: nothing names another origin (but the SVG namespace, not a URL
        // that is loaded).
        let text = res.text().await.unwrap();
        let text = text.replace("http://www.w3.org/2000/svg", "");
        assert!(!text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"));
    }
    assert!(!html.contains("http://") && !html.contains("https://"));
}

#[tokio::test]
async fn one_instance_shows_its_figures_and_no_text_or_ids_of_users() {
    let app = spawn_app_with(&["--admin-token", TOKEN]).await;
    let me = metrics_instance(&app).await;
    let room = unique("admin-room");
    let (ua, ub) = (unique("admin-alice"), unique("admin-bob"));
    let secret = unique("words only the two of them know");
    let mut alice = app.member(&ua, &room).await;
    let mut bob = app.member(&ub, &room).await;
    alice.event("user_joined").await;
    alice.say(&room, &secret).await;
    alice.say(&room, &secret).await;
    bob.event_where("new_message", |m| m["message"] == secret.as_str())
        .await;

    eventually("the report shows the chat", SAMPLED, || async {
        let view = stats(&app).await;
        let r = report(&view, &me);
        r["connections"] == 2
            && r["users"] == 2
            && r["rooms"] == 1
            && r["messagesStored"] == 2
            && r["deliveries"].as_u64().unwrap_or(0) >= 5
    })
    .await;
    let view = stats(&app).await;
    assert_eq!(view["instanceId"], me.as_str());
    assert_eq!(view["shared"], false, "no Redis: this instance alone");
    assert_eq!(view["instances"].as_array().unwrap().len(), 1);
    assert_eq!(view["totals"]["instances"], 1);
    assert_eq!(view["totals"]["connections"], 2);
    let r = report(&view, &me);
    assert_eq!(r["connectionsByTransport"]["socketio"], 2);
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(r["outbox"], Value::Null, "no broker configured");
    let deps: Vec<(&str, bool)> = r["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap(), d["up"].as_bool().unwrap()))
        .collect();
    assert_eq!(deps, [("store", true)]);
    assert_eq!(r["biggestRooms"][0]["roomId"], room.as_str());
    assert_eq!(r["biggestRooms"][0]["members"], 2);
    assert_eq!(r["biggestRooms"][0]["connections"], 2);
    assert_eq!(view["biggestRooms"][0]["roomId"], room.as_str());
    assert_eq!(view["biggestRooms"][0]["members"], 2);
    assert_eq!(view["biggestRooms"][0]["byInstance"][&me], 2);
    // The history has a column per figure, one entry per sample.
    let history = &r["history"];
    let n = history["at"].as_array().unwrap().len();
    assert!(n >= 1);
    for column in [
        "connections",
        "users",
        "rooms",
        "messagesPerSec",
        "deliveriesPerSec",
    ] {
        assert_eq!(history[column].as_array().unwrap().len(), n, "{column}");
    }
    assert_eq!(history["connections"][n - 1], 2);

    // The two messages show as a rate in the sample that followed them.
    eventually("a messages/s sample above zero", SAMPLED, || async {
        let view = stats(&app).await;
        report(&view, &me)["history"]["messagesPerSec"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r.as_f64().unwrap() > 0.0)
    })
    .await;

    // Operators see counts and room ids: never message text, user ids or the token.
    let text = stats(&app).await.to_string();
    for hidden in [secret.as_str(), ua.as_str(), ub.as_str(), TOKEN] {
        assert!(!text.contains(hidden), "{hidden} in {text}");
    }

    // Live: bob leaves, the figures follow.
    bob.disconnect();
    eventually(
        "bob's connection is gone from the report",
        SAMPLED,
        || async {
            let view = stats(&app).await;
            let r = report(&view, &me);
            r["connections"] == 1 && r["users"] == 1 && r["biggestRooms"][0]["members"] == 1
        },
    )
    .await;
}

#[tokio::test]
async fn instances_on_one_redis_see_each_other_and_drop_off() {
    let a = spawn_redis_app(&["--admin-token", TOKEN]).await;
    let mut b = spawn_redis_app(&["--admin-token", TOKEN]).await;
    let (id_a, id_b) = (metrics_instance(&a).await, metrics_instance(&b).await);
    let room = unique("fleet-room");
    let _on_a = a.member(&unique("fleet-ann"), &room).await;
    let _on_b1 = b.member(&unique("fleet-bea"), &room).await;
    let _on_b2 = b.member(&unique("fleet-bob"), &room).await;

    // Either instance's page shows both, with their own figures.
    for (me, app) in [(&id_a, &a), (&id_b, &b)] {
        eventually(
            &format!("{me}'s view of both instances"),
            SAMPLED,
            || async {
                let view = stats(app).await;
                view["instanceId"] == me.as_str()
                    && view["instances"][0]["instanceId"] == me.as_str()
                    && report(&view, &id_a)["connections"] == 1
                    && report(&view, &id_b)["connections"] == 2
                    && report(&view, &id_b)["users"] == 2
            },
        )
        .await;
        let view = stats(app).await;
        assert_eq!(view["shared"], true);
        assert_eq!(view["fleetError"], Value::Null);
        // Other tests' instances may share this Redis: the totals count at least these two.
        assert!(view["totals"]["instances"].as_u64().unwrap() >= 2);
        assert!(view["totals"]["connections"].as_i64().unwrap() >= 3);
        let dependencies = report(&view, &id_b)["dependencies"].to_string();
        assert!(dependencies.contains("\"redis\""), "{dependencies}");
        // The room across instances: three users (the shared member set), 1 here, 2 there.
        let fleet_room = view["biggestRooms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["roomId"] == room.as_str())
            .unwrap_or_else(|| panic!("{room} among the biggest rooms: {view}"))
            .clone();
        assert_eq!(fleet_room["members"], 3, "{fleet_room}");
        assert_eq!(fleet_room["byInstance"][&id_a], 1);
        assert_eq!(fleet_room["byInstance"][&id_b], 2);
    }

    // The reports in Redis: new keys of their own, with a TTL.
    let mut r = redis().await;
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg("chat:admin:instances")
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(ids.contains(&id_a) && ids.contains(&id_b), "{ids:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(own_key(
            "chat:admin:instances",
            &format!(":instance:{id_b}"),
            format!("chat:admin:instance:{id_b}"),
        ))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!((1..=10_000).contains(&ttl), "PTTL {ttl}");

    // A graceful stop withdraws the report at once (well before its TTL).
    b.stop().await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(own_key(
            "chat:admin:instances",
            &format!(":instance:{id_b}"),
            format!("chat:admin:instance:{id_b}"),
        ))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(exists, 0, "withdrawn at shutdown");
    let view = stats(&a).await;
    assert!(!listed(&view, &id_b), "{view}");
    assert!(listed(&view, &id_a));

    // An instance that dies without withdrawing drops off when its report expires, and the
    // reader removes it from the set.
    let c = spawn_redis_app(&["--admin-token", TOKEN]).await;
    let id_c = metrics_instance(&c).await;
    eventually("the new instance is listed", SAMPLED, || async {
        listed(&stats(&a).await, &id_c)
    })
    .await;
    drop(c);
    eventually("the dead instance drops off", EXPIRED, || async {
        !listed(&stats(&a).await, &id_c)
    })
    .await;
    let still: bool = redis::cmd("SISMEMBER")
        .arg("chat:admin:instances")
        .arg(&id_c)
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(!still, "the expired id left the set");
}
