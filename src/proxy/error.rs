//! Errors on the proxy routes, in each provider's own shape so the SDKs raise the right
//! exception: OpenAI `{"error":{"message","type","code","param"}}`, Anthropic
//! `{"type":"error","error":{"type","message"}}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    OpenAi,
    Anthropic,
}

/// The gateway's own failure cases (SPEC §3 table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    InvalidKey(String),
    ModelNotAllowed(String),
    ModelNotFound(String),
    NoQuota(String),
    /// The key's own budget (SPEC §11.3) has no room: the message names the window and reset.
    KeyBudget(String),
    RateLimited {
        message: String,
        retry_after: u64,
    },
    InvalidRequest(String),
    TooLarge(usize),
    NoAccount(String),
    Unreachable(String),
    Timeout(String),
    /// The gateway's own database failed on the proxy path (key, price, accounts, grants).
    Unavailable(String),
    /// The client's address is outside the key's `allowed_ips` (SPEC §11.3).
    IpNotAllowed(String),
    /// The key's or its user's `max_concurrency` requests are already in flight (§11.3).
    Concurrency(String),
}

/// See [`ProxyError::retry_hint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryHint {
    /// `x-should-retry: false`.
    Final,
    /// `Retry-After: N` (seconds).
    After(u64),
    None,
}

#[derive(Debug)]
pub struct ProxyError {
    pub protocol: Protocol,
    pub failure: Failure,
}

impl ProxyError {
    pub fn new(protocol: Protocol, failure: Failure) -> Self {
        ProxyError { protocol, failure }
    }

    /// The gateway's database failed on the proxy path: answered 503 (the request may succeed
    /// once it is back), never as a key or upstream problem. The store's bounded reads log the
    /// outage, rate-limited (`store::outage`), so each request only logs at debug.
    pub fn database(protocol: Protocol, e: impl std::fmt::Display) -> Self {
        tracing::debug!(error = %e, "database error on the proxy path");
        ProxyError::new(
            protocol,
            Failure::Unavailable("the gateway's database is unavailable; try again".into()),
        )
    }

    pub fn status(&self) -> StatusCode {
        match (&self.failure, self.protocol) {
            (Failure::InvalidKey(_), _) => StatusCode::UNAUTHORIZED,
            (Failure::ModelNotAllowed(_), _) => StatusCode::FORBIDDEN,
            (Failure::ModelNotFound(_), _) => StatusCode::NOT_FOUND,
            (Failure::NoQuota(_), Protocol::OpenAi) => StatusCode::TOO_MANY_REQUESTS,
            (Failure::NoQuota(_), Protocol::Anthropic) => StatusCode::PAYMENT_REQUIRED,
            (Failure::KeyBudget(_), Protocol::OpenAi) => StatusCode::TOO_MANY_REQUESTS,
            (Failure::KeyBudget(_), Protocol::Anthropic) => StatusCode::PAYMENT_REQUIRED,
            (Failure::RateLimited { .. }, _) => StatusCode::TOO_MANY_REQUESTS,
            (Failure::InvalidRequest(_), _) => StatusCode::BAD_REQUEST,
            (Failure::TooLarge(_), _) => StatusCode::PAYLOAD_TOO_LARGE,
            (Failure::NoAccount(_), _) => StatusCode::SERVICE_UNAVAILABLE,
            (Failure::Unreachable(_), _) => StatusCode::BAD_GATEWAY,
            (Failure::Timeout(_), _) => StatusCode::GATEWAY_TIMEOUT,
            (Failure::Unavailable(_), _) => StatusCode::SERVICE_UNAVAILABLE,
            (Failure::IpNotAllowed(_), _) => StatusCode::FORBIDDEN,
            (Failure::Concurrency(_), _) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub fn message(&self) -> String {
        match &self.failure {
            Failure::InvalidKey(m)
            | Failure::ModelNotAllowed(m)
            | Failure::ModelNotFound(m)
            | Failure::NoQuota(m)
            | Failure::KeyBudget(m)
            | Failure::InvalidRequest(m)
            | Failure::NoAccount(m)
            | Failure::Unreachable(m)
            | Failure::Timeout(m)
            | Failure::Unavailable(m)
            | Failure::IpNotAllowed(m)
            | Failure::Concurrency(m) => m.clone(),
            Failure::RateLimited { message, .. } => message.clone(),
            Failure::TooLarge(limit) => format!(
                "request body is larger than this gateway accepts ({limit} bytes); send a smaller request"
            ),
        }
    }

    /// The error code (OpenAI's `error.code`, on both protocols): what a refused row's
    /// `error` and `tollgate_refused_total{code}` say.
    pub fn code(&self) -> &'static str {
        self.openai_kind().1
    }

    /// (type, code) in the OpenAI vocabulary.
    fn openai_kind(&self) -> (&'static str, &'static str) {
        match &self.failure {
            Failure::InvalidKey(_) => ("invalid_request_error", "invalid_api_key"),
            Failure::ModelNotAllowed(_) => ("invalid_request_error", "model_not_allowed"),
            Failure::ModelNotFound(_) => ("invalid_request_error", "model_not_found"),
            Failure::NoQuota(_) => ("insufficient_quota", "insufficient_quota"),
            Failure::KeyBudget(_) => ("insufficient_quota", "key_budget_exceeded"),
            Failure::RateLimited { .. } => ("rate_limit_exceeded", "rate_limit_exceeded"),
            Failure::InvalidRequest(_) => ("invalid_request_error", "invalid_request_error"),
            Failure::TooLarge(_) => ("invalid_request_error", "request_too_large"),
            Failure::NoAccount(_) => ("server_error", "no_available_account"),
            Failure::Unreachable(_) => ("server_error", "upstream_unreachable"),
            Failure::Timeout(_) => ("server_error", "upstream_timeout"),
            Failure::Unavailable(_) => ("server_error", "gateway_unavailable"),
            Failure::IpNotAllowed(_) => ("permission_error", "ip_not_allowed"),
            Failure::Concurrency(_) => ("rate_limit_exceeded", "concurrency_limit_exceeded"),
        }
    }

    /// What a client should do about this answer (SPEC §11.4): a refusal a retry cannot fix
    /// is final (`x-should-retry: false`, which Claude Code and the official SDKs honour), one a
    /// later retry may fix says when. Upstream failures (502, 504) and malformed requests carry
    /// no hint: the SDKs' own defaults are right for them.
    pub fn retry_hint(&self) -> RetryHint {
        match &self.failure {
            Failure::InvalidKey(_)
            | Failure::ModelNotAllowed(_)
            | Failure::ModelNotFound(_)
            | Failure::NoQuota(_)
            | Failure::IpNotAllowed(_)
            | Failure::KeyBudget(_) => RetryHint::Final,
            Failure::RateLimited { retry_after, .. } => RetryHint::After(*retry_after),
            // A slot frees as soon as one of the requests in flight ends.
            Failure::NoAccount(_) | Failure::Unavailable(_) | Failure::Concurrency(_) => {
                RetryHint::After(1)
            }
            Failure::InvalidRequest(_)
            | Failure::TooLarge(_)
            | Failure::Unreachable(_)
            | Failure::Timeout(_) => RetryHint::None,
        }
    }

    fn anthropic_type(&self) -> &'static str {
        match &self.failure {
            Failure::InvalidKey(_) => "authentication_error",
            Failure::ModelNotAllowed(_) | Failure::IpNotAllowed(_) => "permission_error",
            Failure::ModelNotFound(_) => "not_found_error",
            Failure::NoQuota(_) | Failure::KeyBudget(_) => "billing_error",
            Failure::RateLimited { .. } | Failure::Concurrency(_) => "rate_limit_error",
            Failure::InvalidRequest(_) => "invalid_request_error",
            Failure::TooLarge(_) => "request_too_large",
            Failure::NoAccount(_) | Failure::Unavailable(_) => "overloaded_error",
            Failure::Unreachable(_) | Failure::Timeout(_) => "api_error",
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.message();
        let body = match self.protocol {
            Protocol::OpenAi => {
                let (kind, code) = self.openai_kind();
                json!({"error": {"message": message, "type": kind, "code": code, "param": null}})
            }
            Protocol::Anthropic => {
                json!({"type": "error", "error": {"type": self.anthropic_type(), "message": message}})
            }
        };
        let mut resp = (status, Json(body)).into_response();
        match self.retry_hint() {
            RetryHint::Final => {
                resp.headers_mut()
                    .insert("x-should-retry", HeaderValue::from_static("false"));
            }
            RetryHint::After(secs) => {
                resp.headers_mut()
                    .insert("retry-after", HeaderValue::from(secs));
            }
            RetryHint::None => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: ProxyError) -> (StatusCode, serde_json::Value) {
        let r = e.into_response();
        let status = r.status();
        let b = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&b).unwrap())
    }

    #[tokio::test]
    async fn a_database_failure_is_503_in_each_shape() {
        let down =
            || Failure::Unavailable("the gateway's database is unavailable; try again".into());
        let (status, v) = body(ProxyError::new(Protocol::OpenAi, down())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            v,
            json!({"error": {"message": "the gateway's database is unavailable; try again", "type": "server_error", "code": "gateway_unavailable", "param": null}})
        );
        let (status, v) = body(ProxyError::new(Protocol::Anthropic, down())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "the gateway's database is unavailable; try again"}})
        );
    }

    #[tokio::test]
    async fn over_a_concurrency_cap_is_429_in_each_shape() {
        let busy = || Failure::Concurrency("busy".into());
        let (status, v) = body(ProxyError::new(Protocol::OpenAi, busy())).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            v,
            json!({"error": {"message": "busy", "type": "rate_limit_exceeded", "code": "concurrency_limit_exceeded", "param": null}})
        );
        let (status, v) = body(ProxyError::new(Protocol::Anthropic, busy())).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            v,
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "busy"}})
        );
    }

    #[test]
    fn final_refusals_say_so_and_passing_ones_say_when() {
        let resp = |f| ProxyError::new(Protocol::OpenAi, f).into_response();
        let headers = |f| {
            let r = resp(f);
            let h = |n| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
            (h("x-should-retry"), h("retry-after"))
        };
        let fin = (Some("false".to_string()), None);
        assert_eq!(headers(Failure::InvalidKey("k".into())), fin);
        assert_eq!(headers(Failure::ModelNotAllowed("m".into())), fin);
        assert_eq!(headers(Failure::ModelNotFound("m".into())), fin);
        assert_eq!(headers(Failure::NoQuota("q".into())), fin);
        assert_eq!(headers(Failure::IpNotAllowed("ip".into())), fin);
        assert_eq!(headers(Failure::KeyBudget("k".into())), fin);
        let after = |n: &str| (None, Some(n.to_string()));
        let rate = Failure::RateLimited {
            message: "slow down".into(),
            retry_after: 7,
        };
        assert_eq!(headers(rate), after("7"));
        assert_eq!(headers(Failure::NoAccount("busy".into())), after("1"));
        assert_eq!(headers(Failure::Unavailable("down".into())), after("1"));
        assert_eq!(headers(Failure::Concurrency("busy".into())), after("1"));
        for f in [
            Failure::InvalidRequest("bad".into()),
            Failure::TooLarge(10),
            Failure::Unreachable("x".into()),
            Failure::Timeout("x".into()),
        ] {
            assert_eq!(headers(f), (None, None));
        }
        // Anthropic answers carry the same hints.
        let r = ProxyError::new(Protocol::Anthropic, Failure::NoQuota("q".into())).into_response();
        assert_eq!(r.headers()["x-should-retry"], "false");
    }
}
