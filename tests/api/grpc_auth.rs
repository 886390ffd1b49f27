//! AUTH_MODE=grpc against a real tonic server implementing `proto/auth.proto`, run in the test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chat_service::auth::grpc::proto::auth_service_server::{AuthService, AuthServiceServer};
use chat_service::auth::grpc::proto::{ValidateTokenRequest, ValidateTokenResponse};
use serde_json::json;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::support::{capture_logs, spawn_app_with};

/// An Auth Service that knows a fixed set of tokens and counts the calls it gets.
#[derive(Clone, Default)]
struct FakeAuthService {
    tokens: Arc<HashMap<String, ValidateTokenResponse>>,
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl AuthService for FakeAuthService {
    async fn validate_token(
        &self,
        request: Request<ValidateTokenRequest>,
    ) -> Result<Response<ValidateTokenResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let token = request.into_inner().token;
        Ok(Response::new(
            self.tokens.get(&token).cloned().unwrap_or_default(),
        ))
    }
}

struct RunningAuth {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningAuth {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.await;
    }
}

fn now() -> i64 {
    chat_service::domain::now_ms() as i64 / 1000
}

async fn start_auth_service(tokens: &[(&str, &str, &str, i64)]) -> RunningAuth {
    start_auth_service_at("127.0.0.1:0", tokens).await
}

/// The Auth Service on `addr` (port 0: any free port; a stopped one's address: it comes back).
async fn start_auth_service_at(addr: &str, tokens: &[(&str, &str, &str, i64)]) -> RunningAuth {
    let service = FakeAuthService {
        tokens: Arc::new(
            tokens
                .iter()
                .map(|(token, user, name, exp)| {
                    let answer = ValidateTokenResponse {
                        valid: true,
                        user_id: user.to_string(),
                        username: name.to_string(),
                        expires_at: *exp,
                    };
                    (token.to_string(), answer)
                })
                .collect(),
        ),
        calls: Arc::default(),
    };
    let calls = service.calls.clone();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AuthServiceServer::new(service))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
    });
    RunningAuth {
        addr,
        calls,
        stop: Some(stop),
        task,
    }
}

#[tokio::test]
async fn the_auth_service_decides_who_the_user_is() {
    let auth = start_auth_service(&[("tok-alice", "alice-id", "Alice", 0)]).await;
    let url = format!("http://{}", auth.addr);
    let app = spawn_app_with(&["--auth-mode", "grpc", "--auth-grpc-url", &url]).await;
    let mut c = app.client().await;
    let ack = c
        .emit_ack(
            "authenticate",
            json!({"token": "tok-alice", "userId": "mallory"}),
        )
        .await;
    assert_eq!(
        ack,
        json!({"success": true, "userId": "alice-id", "username": "Alice"})
    );
    let ack = c
        .emit_ack("authenticate", json!({"token": "unknown"}))
        .await;
    assert_eq!(ack["error"]["code"], "auth_failed");
    // Without a token: the identity a token established stays (issue 15.3); a connection
    // without one is refused.
    let ack = c
        .emit_ack("authenticate", json!({"userId": "no-token"}))
        .await;
    assert_eq!(ack["userId"], "alice-id", "{ack}");
    let ack = app
        .client()
        .await
        .emit_ack("authenticate", json!({"userId": "no-token"}))
        .await;
    assert_eq!(ack["error"]["code"], "auth_failed");
    // REST with the Bearer token.
    let (status, _) = app
        .get_with("/api/chat/rooms", &[("authorization", "Bearer tok-alice")])
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .get_with("/api/chat/rooms", &[("authorization", "Bearer nope")])
        .await;
    assert_eq!(status, 401);
    let (status, body) = app.get("/ready").await;
    assert_eq!(
        (status, &body["dependencies"]["auth"]["status"]),
        (200, &json!("up"))
    );
    auth.stop().await;
}

#[tokio::test]
async fn positive_answers_are_cached_and_an_outage_is_unavailable_not_trust() {
    let auth = start_auth_service(&[("tok-a", "a", "A", 0), ("tok-b", "b", "B", 0)]).await;
    let url = format!("http://{}", auth.addr);
    let app = spawn_app_with(&[
        "--auth-mode",
        "grpc",
        "--auth-grpc-url",
        &url,
        "--auth-cache-ttl-secs",
        "600",
    ])
    .await;
    let mut c = app.client().await;
    assert_eq!(
        c.emit_ack("authenticate", json!({"token": "tok-a"})).await["success"],
        true
    );
    let calls_after_first = auth.calls.load(Ordering::SeqCst);
    let mut again = app.client().await;
    assert_eq!(
        again
            .emit_ack("authenticate", json!({"token": "tok-a"}))
            .await["success"],
        true
    );
    assert_eq!(
        auth.calls.load(Ordering::SeqCst),
        calls_after_first,
        "cached answer not used"
    );

    auth.stop().await;
    // Down: a token it never validated is refused as unavailable, never trusted.
    let mut b = app.client().await;
    let ack = b
        .emit_ack("authenticate", json!({"token": "tok-b", "userId": "b"}))
        .await;
    assert_eq!(ack["error"]["code"], "unavailable", "{ack}");
    assert_eq!(b.event("error").await["code"], "unavailable");
    let (status, body) = app
        .get_with("/api/chat/rooms", &[("authorization", "Bearer tok-b")])
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("unavailable"))
    );
    let (status, body) = app.get("/ready").await;
    assert_eq!(
        (status, &body["dependencies"]["auth"]["status"]),
        (503, &json!("down"))
    );
}

#[tokio::test]
async fn the_cache_never_outlives_the_token() {
    // The service says the token expires in 3 s (whole seconds, so 2 to 3 s from now): the
    // answer may not be reused after that.
    let auth = start_auth_service(&[
        ("short", "s", "S", now() + 3),
        ("gone", "g", "G", now() - 5),
    ])
    .await;
    let url = format!("http://{}", auth.addr);
    let app = spawn_app_with(&[
        "--auth-mode",
        "grpc",
        "--auth-grpc-url",
        &url,
        "--auth-cache-ttl-secs",
        "600",
    ])
    .await;
    let mut c = app.client().await;
    let ack = c.emit_ack("authenticate", json!({"token": "gone"})).await;
    assert_eq!(ack["error"]["code"], "token_expired");
    assert_eq!(c.event("error").await["code"], "token_expired");
    assert_eq!(
        c.emit_ack("authenticate", json!({"token": "short"})).await["success"],
        true
    );
    // The connection is told when the token runs out (an event, not a sleep)...
    let err = c
        .event_within(
            "error",
            |e| e["code"] == "token_expired",
            std::time::Duration::from_secs(8),
        )
        .await;
    assert_eq!(err["code"], "token_expired");
    // ...and a new authentication with it goes back to the service, which now refuses it.
    let calls = auth.calls.load(Ordering::SeqCst);
    let mut d = app.client().await;
    let ack = d.emit_ack("authenticate", json!({"token": "short"})).await;
    assert_eq!(ack["error"]["code"], "token_expired");
    assert_eq!(auth.calls.load(Ordering::SeqCst), calls + 1);
    auth.stop().await;
}

/// Issue 18.2: the Auth Service going away and coming back is logged once each (warn, then
/// info), however many token checks fail or pass in between.
#[tokio::test]
async fn the_auth_services_outage_and_return_are_logged_once_each() {
    let (logs, _guard) = capture_logs();

    let tokens = [("tok-a", "a", "A", 0), ("tok-b", "b", "B", 0)];
    let auth = start_auth_service(&tokens).await;
    let addr = auth.addr.to_string();
    let url = format!("http://{addr}");
    let app = spawn_app_with(&["--auth-mode", "grpc", "--auth-grpc-url", &url]).await;
    let mut c = app.client().await;
    assert_eq!(
        c.emit_ack("authenticate", json!({"token": "tok-a"})).await["success"],
        true
    );
    auth.stop().await;
    // Three new connections authenticate with a token the cache never held.
    let three_times = || async {
        let mut acks = Vec::new();
        for _ in 0..3 {
            let mut c = app.client().await;
            acks.push(c.emit_ack("authenticate", json!({"token": "tok-b"})).await);
        }
        acks
    };
    for ack in three_times().await {
        assert_eq!(ack["error"]["code"], "unavailable", "{ack}");
    }
    let down = logs.lines_with("Auth Service unavailable");
    assert_eq!(down.len(), 1, "{down:?}");
    assert!(down[0].contains("WARN"), "{down:?}");
    assert!(logs.lines_with("reachable again").is_empty());

    // Back on the same address: the next checks pass, and that is logged once.
    let auth = start_auth_service_at(&addr, &tokens).await;
    for ack in three_times().await {
        assert_eq!(ack["success"], true, "{ack}");
    }
    let up = logs.lines_with("Auth Service reachable again");
    assert_eq!(up.len(), 1, "{up:?}");
    assert!(up[0].contains("INFO"), "{up:?}");
    assert_eq!(logs.lines_with("Auth Service unavailable").len(), 1);
    auth.stop().await;
}
