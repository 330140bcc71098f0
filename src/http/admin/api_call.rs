//! Writes from the UI go through the admin JSON API, in process: the same validation, the same
//! side effects, the same authentication (the request's own session or token, plus the
//! session's CSRF token), with no second copy of the rules.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tower::ServiceExt;

use super::{Admin, Runtime};
use crate::state::AppState;

/// The admin API as the admin behind this request: a handler's way to write.
pub struct Api {
    rt: Arc<Runtime>,
    admin: Admin,
}

impl FromRequestParts<AppState> for Api {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Api, Response> {
        // Both are put there by the router and `require_admin` for every page route.
        match (
            parts.extensions.get::<Arc<Runtime>>(),
            parts.extensions.get::<Admin>(),
        ) {
            (Some(rt), Some(admin)) => Ok(Api {
                rt: rt.clone(),
                admin: admin.clone(),
            }),
            _ => Err(StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        }
    }
}

/// The API refused a write: its status, message and the field it named.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: u16,
    pub message: String,
    pub param: Option<String>,
}

impl Api {
    /// Call `/api/admin{path}`; the response body on 2xx, else the API's error.
    pub async fn call(&self, method: Method, path: &str, body: Value) -> Result<Value, ApiFailure> {
        let admin = &self.admin;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        for (name, value) in &admin.credentials {
            req = req.header(name, value);
        }
        if !admin.csrf.is_empty() {
            req = req.header("x-csrf-token", &admin.csrf);
        }
        let failure = |message: String| ApiFailure {
            status: 500,
            message,
            param: None,
        };
        let req = req
            .body(Body::from(body.to_string()))
            .map_err(|e| failure(e.to_string()))?;
        let resp = self
            .rt
            .api
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| failure(e.to_string()))?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 4 * 1024 * 1024)
            .await
            .map_err(|e| failure(e.to_string()))?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        Err(ApiFailure {
            status: status.as_u16(),
            message: v["error"]["message"]
                .as_str()
                .unwrap_or("the request failed")
                .to_string(),
            param: v["error"]["param"].as_str().map(str::to_string),
        })
    }
}

impl ApiFailure {
    /// The failure in the page's language: the field's label, then what is wrong with it.
    pub fn text(&self, tr: crate::i18n::Tr) -> String {
        if self.status == 409 {
            return tr.t("error.conflict").to_string();
        }
        let message = match &self.param {
            Some(p) => self
                .message
                .strip_prefix(&format!("`{p}`: "))
                .unwrap_or(&self.message),
            None => &self.message,
        };
        let message = tr.api_message(message);
        match self.param.as_deref() {
            Some(p) => format!("{}{}{message}", tr.field(p), tr.t("form.separator")),
            None => message.to_string(),
        }
    }

    /// The status of the page that shows this failure.
    pub fn status(&self) -> axum::http::StatusCode {
        axum::http::StatusCode::from_u16(self.status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(axum::http::StatusCode::BAD_REQUEST)
    }
}
