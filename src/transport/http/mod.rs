//! REST (SPEC 4): health and readiness, message history, rooms, the message lifecycle of
//! SPEC 10 (`lifecycle.rs`), the OpenAPI document
//! (`openapi.rs`) and the Prometheus metrics (`metrics.rs`). Every route lives under `/api/chat/...` and, for the gateway example of the
//! old README, also under `/chat/...`. Handlers are thin: extract, call one `ChatService`
//! method, map.

pub(crate) mod bearer;
mod error;
mod lifecycle;
mod metrics;
mod openapi;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::auth::Credentials;
use crate::chat::{ChatError, ChatService};
use crate::domain::{Identity, MessageId, RoomId, RoomType, UserId, history_items};
pub use error::ApiError;

#[derive(Clone)]
pub struct HttpState {
    pub chat: Arc<ChatService>,
    /// `METRICS_TOKEN`: the bearer token `GET /metrics` requires (`None`: open).
    pub metrics_token: Option<Arc<str>>,
}

pub fn router(state: HttpState) -> Router {
    let chat_routes = Router::new()
        .route("/rooms", get(list_rooms).post(create_room))
        .route("/rooms/{room_id}", get(get_room))
        .route("/{room_id}/history", get(history))
        .route(
            "/{room_id}/messages/{message_id}",
            axum::routing::patch(lifecycle::edit).delete(lifecycle::delete),
        )
        .route(
            "/{room_id}/messages/{message_id}/reactions/{emoji}",
            put(lifecycle::add_reaction).delete(lifecycle::remove_reaction),
        )
        .route("/{room_id}/read", post(lifecycle::mark_read))
        .route("/{room_id}/receipts", get(lifecycle::receipts));
    let document = Bytes::from(openapi::document(
        state.chat.authenticator().requires_token(),
        state.metrics_token.is_some(),
    ));
    let openapi = get(move || async move {
        ([(header::CONTENT_TYPE, "application/json")], document).into_response()
    });
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics::metrics))
        .route("/api/openapi.json", openapi.clone())
        .route("/openapi.json", openapi)
        .nest("/api/chat", chat_routes.clone())
        .nest("/chat", chat_routes)
        .with_state(state)
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "service": "chat-service"}))
}

async fn ready(State(st): State<HttpState>) -> Response {
    let deps = st.chat.readiness().await;
    let all_up = deps.iter().all(|d| d.up);
    let body = json!({
        "status": if all_up { "ready" } else { "unavailable" },
        "service": "chat-service",
        "dependencies": deps.iter().map(|d| (d.name.to_string(), json!({
            "status": if d.up { "up" } else { "down" },
            "error": d.error,
        }))).collect::<serde_json::Map<String, Value>>(),
    });
    let status = if all_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The caller of a REST request: from the Bearer token when the auth mode checks tokens
/// (401 without one); with `AUTH_MODE=none`, from the `X-User-Id` / `X-Username` headers, and
/// anonymous without them. Those headers must be printable ASCII (400 otherwise, rather than
/// an unreadable identity taken for none).
async fn caller(chat: &ChatService, headers: &HeaderMap) -> Result<Option<Identity>, ApiError> {
    let header_text = |name: &str| -> Result<Option<String>, ApiError> {
        headers
            .get(name)
            .map(|v| {
                v.to_str().map(str::to_owned).map_err(|_| {
                    ApiError(ChatError::InvalidPayload(format!(
                        "{name} must be printable ASCII"
                    )))
                })
            })
            .transpose()
    };
    if chat.authenticator().requires_token() {
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_owned())
            });
        let Some(token) = bearer else {
            return Err(ChatError::AuthFailed("Missing Authorization: Bearer token".into()).into());
        };
        let credentials = Credentials {
            token: Some(token),
            ..Credentials::default()
        };
        return Ok(Some(chat.identify(credentials).await?));
    }
    match header_text("x-user-id")? {
        Some(user_id) => Ok(Some(
            chat.identify(Credentials {
                token: None,
                user_id: Some(user_id),
                username: header_text("x-username")?,
            })
            .await?,
        )),
        None => Ok(None),
    }
}

fn required(caller: Option<Identity>) -> Result<Identity, ApiError> {
    caller.ok_or(ApiError(ChatError::NotAuthenticated))
}

fn room_id(raw: &str) -> Result<RoomId, ApiError> {
    Ok(RoomId::parse(raw).map_err(ChatError::from)?)
}

async fn history(
    State(st): State<HttpState>,
    Path(raw_room): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = caller(&st.chat, &headers).await?;
    let room = room_id(&raw_room)?;
    let limit = match query.get("limit") {
        None => 50,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                return Err(ChatError::InvalidPayload(
                    "limit must be an integer from 1 to 1000".into(),
                )
                .into());
            }
        },
    };
    let before = match query.get("before").filter(|b| !b.is_empty()) {
        Some(raw) => Some(MessageId::parse(raw).map_err(ChatError::from)?),
        None => None,
    };
    let messages = st
        .chat
        .history(who.as_ref(), &room, limit, before.as_ref())
        .await?;
    Ok(Json(
        json!({"success": true, "messages": history_items(&messages)}),
    ))
}

async fn list_rooms(
    State(st): State<HttpState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = required(caller(&st.chat, &headers).await?)?;
    let rooms = st.chat.rooms_of(&who).await?;
    Ok(Json(json!({"success": true, "rooms": rooms})))
}

async fn get_room(
    State(st): State<HttpState>,
    Path(raw_room): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let who = caller(&st.chat, &headers).await?;
    let room = room_id(&raw_room)?;
    let room = st.chat.room(who.as_ref(), &room).await?;
    Ok(Json(json!({"success": true, "room": room})))
}

async fn create_room(
    State(st): State<HttpState>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let who = required(caller(&st.chat, &headers).await?)?;
    let Json(body) = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ChatError::PayloadTooLarge
        } else {
            ChatError::InvalidPayload(format!("body must be a JSON object: {}", e.body_text()))
        }
    })?;
    let invalid = |m: &str| ApiError(ChatError::InvalidPayload(m.into()));
    let room_type = body
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("type must be direct or group"))?;
    let room_type = RoomType::parse(room_type).map_err(ChatError::from)?;
    let participants = body
        .get("participants")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("participants must be an array of user ids"))?;
    if participants.len() > 1000 {
        return Err(invalid("participants may list at most 1000 users"));
    }
    let participants = participants
        .iter()
        .map(|p| {
            p.as_str()
                .ok_or_else(|| invalid("participants must be an array of user ids"))
                .and_then(|s| UserId::parse(s).map_err(|e| ApiError(e.into())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let requested_id = match body.get("roomId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(room_id(s)?),
        Some(_) => return Err(invalid("roomId must be a string")),
    };
    let (room, created) = st
        .chat
        .create_room(&who, room_type, participants, requested_id)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({"success": true, "room": room}))).into_response())
}
