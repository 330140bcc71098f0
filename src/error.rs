//! Errors of the admin JSON API: `{"error":{"message","type","code","param"}}`.
//! (Proxy routes answer in each provider's own shape: see `proxy::error`.)

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::admin::{AdminError, Taken};
use crate::i18n::{Lang, Tr};
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: "invalid_value",
            message: format!("`{param}`: {}", message.into()),
            param: Some(param.to_string()),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: "invalid_request",
            message: message.into(),
            param: None,
        }
    }
    pub fn not_found(what: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found_error",
            code: "not_found",
            message: format!("{what} not found"),
            param: None,
        }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::CONFLICT,
            kind: "conflict_error",
            code: "already_exists",
            message: message.into(),
            param: None,
        }
    }
    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            code: "unauthorized",
            message: "admin authentication required: send `Authorization: Bearer <admin.api_token>` or log in".into(),
            param: None,
        }
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            code: "internal_error",
            message: "internal error; see the server log".into(),
            param: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "code": self.code,
            "param": self.param,
        }});
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("object"),
            StoreError::Conflict => {
                ApiError::conflict("an object with that unique value already exists")
            }
            other => ApiError::internal(other),
        }
    }
}

/// An admin operation's refusal in English: a field's problem is 400 `invalid_value` naming
/// the field, a missing object 404, a taken value 409, a store failure 500.
impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid { field, problem } => {
                ApiError::invalid(field, problem.text(Tr::new(Lang::En)))
            }
            AdminError::NotFound(what) => ApiError::not_found(what),
            AdminError::Conflict(Taken::Username(u)) => {
                ApiError::conflict(format!("username `{u}` is taken"))
            }
            AdminError::Conflict(Taken::Unique) => {
                ApiError::conflict("an object with that unique value already exists")
            }
            AdminError::Store(e) => ApiError::internal(e),
        }
    }
}

/// `Json` whose rejection is an [`ApiError`] naming the offending field.
pub struct AppJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(AppJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    match rej {
        JsonRejection::JsonDataError(e) => {
            // "Failed to deserialize the JSON body into the target type: field: reason"
            let text = e.body_text();
            let detail = text
                .split_once(": ")
                .map(|x| x.1)
                .unwrap_or(&text)
                .to_string();
            let param = detail.split_once(": ").map(|x| x.0.to_string());
            let mut err = ApiError::bad_request(detail);
            if let Some(p) = param.filter(|p| !p.contains(' ')) {
                err.param = Some(p);
            }
            err
        }
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::bad_request("send the body as JSON with `Content-Type: application/json`")
        }
        other => ApiError::bad_request(format!("malformed JSON: {}", other.body_text())),
    }
}

pub fn query_rejection(rej: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("bad query string: {}", rej.body_text()))
}
