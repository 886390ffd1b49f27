//! REST errors: one status and body per `ChatError`, `{"success": false, "error": {code, message}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::chat::ChatError;

pub struct ApiError(pub ChatError);

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        Self(e)
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self.0 {
            ChatError::NotAuthenticated | ChatError::AuthFailed(_) | ChatError::TokenExpired => {
                StatusCode::UNAUTHORIZED
            }
            ChatError::InvalidPayload(_) => StatusCode::BAD_REQUEST,
            ChatError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ChatError::Forbidden(_) => StatusCode::FORBIDDEN,
            ChatError::NotFound(_) => StatusCode::NOT_FOUND,
            ChatError::RateLimited | ChatError::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            ChatError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ChatError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"success": false, "error": {"code": self.0.code(), "message": self.0.to_string()}});
        (self.status(), Json(body)).into_response()
    }
}
