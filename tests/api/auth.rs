//! SPEC 5: AUTH_MODE=jwt (HS256 secret, ES256 public key): identity from the token only,
//! failures keep the connection unauthenticated, handshake auth, REST Bearer.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::{SioClient, fixture, spawn_app_with};

pub(crate) const SECRET: &str = "test-secret-please-change";

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub(crate) fn hs256(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn jwt_identity_comes_from_the_token_not_the_claimed_fields() {
    let app = spawn_app_with(&["--auth-mode", "jwt", "--jwt-secret", SECRET]).await;
    let mut c = app.client().await;
    let token = hs256(
        json!({"sub": "real-id", "username": "Real", "exp": now() + 600}),
        SECRET,
    );
    let ack = c
        .emit_ack(
            "authenticate",
            json!({"userId": "claimed", "username": "Claimed", "token": token}),
        )
        .await;
    assert_eq!(
        ack,
        json!({"success": true, "userId": "real-id", "username": "Real"})
    );
    assert_eq!(
        c.event("authenticated").await,
        json!({"userId": "real-id", "username": "Real"})
    );
    c.join("jr").await;
    assert_eq!(c.say("jr", "hi").await["success"], true);
    assert_eq!(c.event("new_message").await["userId"], "real-id");
}

#[tokio::test]
async fn bad_missing_and_expired_tokens_leave_the_connection_unauthenticated() {
    let app = spawn_app_with(&["--auth-mode", "jwt", "--jwt-secret", SECRET]).await;
    let mut c = app.client().await;
    let cases = [
        (json!({"userId": "u", "username": "u"}), "auth_failed"),
        (json!({"token": "not.a.jwt"}), "auth_failed"),
        (
            json!({"token": hs256(json!({"sub": "u", "exp": now() + 600}), "wrong-secret")}),
            "auth_failed",
        ),
        (
            json!({"token": hs256(json!({"sub": "u"}), SECRET)}),
            "auth_failed",
        ),
        (
            json!({"token": hs256(json!({"sub": "u", "exp": now() - 10}), SECRET)}),
            "token_expired",
        ),
    ];
    for (payload, code) in cases {
        let ack = c.emit_ack("authenticate", payload.clone()).await;
        assert_eq!(ack["error"]["code"], code, "{payload}");
        assert_eq!(c.event("error").await["code"], code);
        let ack = c.emit_ack("join_room", json!({"roomId": "x"})).await;
        assert_eq!(ack["error"]["code"], "not_authenticated");
        c.event("error").await;
    }
}

#[tokio::test]
async fn handshake_auth_token_authenticates_at_connect() {
    let app = spawn_app_with(&["--auth-mode", "jwt", "--jwt-secret", SECRET]).await;
    let token = hs256(
        json!({"sub": "hs", "name": "Hand Shake", "exp": now() + 600}),
        SECRET,
    );
    let mut c = SioClient::connect(app.addr, Some(json!({"token": token}))).await;
    assert_eq!(
        c.event("authenticated").await,
        json!({"userId": "hs", "username": "Hand Shake"})
    );
    c.join("hand").await;
    let mut bad = SioClient::connect(app.addr, Some(json!({"token": "garbage"}))).await;
    assert_eq!(bad.event("error").await["code"], "auth_failed");
}

/// Issue 15.3: the seed's client connects with `auth: {token}` and then emits `authenticate
/// {userId, username}` without a token. It is answered with the handshake's identity; the
/// claimed fields are ignored, and a token of another user is still refused.
#[tokio::test]
async fn seed_style_authenticate_after_a_handshake_token_keeps_the_handshake_identity() {
    let app = spawn_app_with(&["--auth-mode", "jwt", "--jwt-secret", SECRET]).await;
    let token = hs256(
        json!({"sub": "hs2", "name": "Real Name", "exp": now() + 600}),
        SECRET,
    );
    let mut c = SioClient::connect(app.addr, Some(json!({"token": token}))).await;
    let me = json!({"userId": "hs2", "username": "Real Name"});
    assert_eq!(c.event("authenticated").await, me);
    let ack = c
        .emit_ack(
            "authenticate",
            json!({"userId": "claimed", "username": "Claimed"}),
        )
        .await;
    assert_eq!(
        ack,
        json!({"success": true, "userId": "hs2", "username": "Real Name"})
    );
    assert_eq!(c.event("authenticated").await, me);
    c.join("seed-style").await;
    assert_eq!(c.say("seed-style", "hi").await["success"], true);
    assert_eq!(c.event("new_message").await["userId"], "hs2");
    // A token of another user: refused, and the connection stays who it was.
    let other = hs256(json!({"sub": "someone-else", "exp": now() + 600}), SECRET);
    let ack = c.emit_ack("authenticate", json!({"token": other})).await;
    assert_eq!(ack["success"], false, "{ack}");
    assert_eq!(c.say("seed-style", "still me").await["success"], true);
    let last = c
        .event_where("new_message", |m| m["message"] == "still me")
        .await;
    assert_eq!(last["userId"], "hs2");
    // Without a handshake token, a token-less authenticate is still refused.
    let mut anonymous = app.client().await;
    let ack = anonymous
        .emit_ack(
            "authenticate",
            json!({"userId": "claimed", "username": "Claimed"}),
        )
        .await;
    assert_eq!(ack["error"]["code"], "auth_failed", "{ack}");
}

#[tokio::test]
async fn es256_public_key_with_issuer_and_audience() {
    let public = std::fs::read_to_string(fixture("ec-public.pem")).unwrap();
    let private = std::fs::read(fixture("ec-private.pem")).unwrap();
    let app = spawn_app_with(&[
        "--auth-mode",
        "jwt",
        &format!("--jwt-public-key={public}"),
        "--jwt-issuer",
        "auth.example",
        "--jwt-audience",
        "chat",
    ])
    .await;
    let key = EncodingKey::from_ec_pem(&private).unwrap();
    let sign = |claims: Value| {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap()
    };
    let good =
        sign(json!({"sub": "ec-user", "iss": "auth.example", "aud": "chat", "exp": now() + 600}));
    let wrong_iss =
        sign(json!({"sub": "ec-user", "iss": "evil", "aud": "chat", "exp": now() + 600}));
    let wrong_aud =
        sign(json!({"sub": "ec-user", "iss": "auth.example", "aud": "other", "exp": now() + 600}));
    let no_iss = sign(json!({"sub": "ec-user", "aud": "chat", "exp": now() + 600}));
    let no_aud = sign(json!({"sub": "ec-user", "iss": "auth.example", "exp": now() + 600}));
    let mut c = app.client().await;
    for token in [wrong_iss, wrong_aud, no_iss, no_aud] {
        let ack = c.emit_ack("authenticate", json!({"token": token})).await;
        assert_eq!(ack["error"]["code"], "auth_failed", "{ack}");
    }
    // An HS256 token signed with the public key text must not pass (algorithm confusion).
    let confused = hs256(
        json!({"sub": "x", "iss": "auth.example", "aud": "chat", "exp": now() + 600}),
        &public,
    );
    assert_eq!(
        c.emit_ack("authenticate", json!({"token": confused})).await["error"]["code"],
        "auth_failed"
    );
    let ack = c
        .emit_ack("authenticate", json!({"token": good.clone()}))
        .await;
    assert_eq!(ack["userId"], "ec-user");
    let bearer = format!("Bearer {good}");
    let (status, _) = app
        .get_with("/api/chat/any/history", &[("authorization", &bearer)])
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn rest_requires_a_valid_bearer_token_in_jwt_mode() {
    let app = spawn_app_with(&["--auth-mode", "jwt", "--jwt-secret", SECRET]).await;
    let good = format!(
        "Bearer {}",
        hs256(json!({"sub": "r", "exp": now() + 600}), SECRET)
    );
    let expired = format!(
        "Bearer {}",
        hs256(json!({"sub": "r", "exp": now() - 5}), SECRET)
    );
    let (status, body) = app.get("/api/chat/room-123/history").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("auth_failed"))
    );
    let (status, body) = app
        .get_with("/api/chat/room-123/history", &[("authorization", &expired)])
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("token_expired"))
    );
    let (status, _) = app
        .get_with(
            "/api/chat/room-123/history",
            &[("authorization", "Bearer nope")],
        )
        .await;
    assert_eq!(status, 401);
    // X-User-Id means nothing when tokens are checked.
    let (status, _) = app.get_with("/api/chat/rooms", &[("x-user-id", "r")]).await;
    assert_eq!(status, 401);
    let (status, body) = app
        .get_with("/api/chat/room-123/history", &[("authorization", &good)])
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"success": true, "messages": []}))
    );
    assert_eq!(app.get("/health").await.0, 200);
}

#[tokio::test]
async fn misconfigured_jwt_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = chat_service::config::Config::from_args([
        "chat-service",
        "--port",
        "0",
        "--auth-mode",
        "jwt",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ])
    .unwrap();
    let err = chat_service::app::App::build(cfg)
        .await
        .err()
        .expect("must not start");
    assert!(err.to_string().contains("JWT_SECRET"), "{err}");
}

#[tokio::test]
async fn a_connection_is_told_when_its_token_expires_and_must_reauthenticate() {
    let app = spawn_app_with(&["--auth-mode", "jwt", "--jwt-secret", SECRET]).await;
    let mut c = app.client().await;
    let short = hs256(json!({"sub": "exp-user", "exp": now() + 3}), SECRET);
    assert_eq!(
        c.emit_ack("authenticate", json!({"token": short})).await["success"],
        true
    );
    c.join("expiring").await;
    // Pushed by the server when the token runs out, without any client event.
    let err = c
        .event_within("error", |_| true, std::time::Duration::from_secs(8))
        .await;
    assert_eq!(err["code"], "token_expired");
    let ack = c
        .emit_ack(
            "send_message",
            json!({"roomId": "expiring", "message": "late"}),
        )
        .await;
    assert_eq!(ack["error"]["code"], "token_expired");
    let fresh = hs256(json!({"sub": "exp-user", "exp": now() + 600}), SECRET);
    assert_eq!(
        c.emit_ack("authenticate", json!({"token": fresh})).await["success"],
        true
    );
    assert_eq!(c.say("expiring", "renewed").await["success"], true);
    // The refused send was not stored: the next message the member gets is the renewed one.
    assert_eq!(c.event("new_message").await["message"], "renewed");
}

#[tokio::test]
async fn help_lists_every_setting_and_never_prints_secrets() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-service"))
        .arg("--help")
        .env("JWT_SECRET", "do-not-print-me")
        .env("REDIS_PASSWORD", "nor-me")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "PORT",
        "DATA_DIR",
        "CORS_ORIGIN",
        "MAX_CONNECTIONS_PER_USER",
        "JWT_SECRET",
        "AUTH_MODE",
    ] {
        assert!(help.contains(var), "{var} missing from --help");
    }
    assert!(!help.contains("do-not-print-me") && !help.contains("nor-me"));
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_chat-service"))
        .env("PORT", "not-a-port")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("PORT"));
}
