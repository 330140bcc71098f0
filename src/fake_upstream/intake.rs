//! The request as handlers see it: extracting it records it and reads the body.

use std::sync::Arc;

use axum::{
    extract::{FromRequest, OriginalUri, Request},
    http::{HeaderMap, StatusCode},
    response::Response,
};
use bytes::Bytes;

use super::behaviours::Proto;
use super::reply::error_response;
use super::{FakeState, ReceivedRequest, MAX_BODY};

/// The request as handlers see it; extracting it records it.
pub(super) struct Incoming {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl FromRequest<Arc<FakeState>> for Incoming {
    type Rejection = Response;

    async fn from_request(req: Request, state: &Arc<FakeState>) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let uri = match parts.extensions.get::<OriginalUri>() {
            Some(OriginalUri(uri)) => uri,
            None => &parts.uri,
        };
        let path = uri.path().to_owned();
        let query = uri.query().map(str::to_owned);
        let proto = Proto::for_request(&path, &parts.headers);
        let body = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(b) => b,
            Err(err) => {
                let msg = format!("could not read the request body: {err}");
                return Err(error_response(proto, StatusCode::BAD_REQUEST, &msg, ""));
            }
        };
        let method = parts.method.as_str().to_owned();
        if state.record {
            let headers = parts
                .headers
                .iter()
                .map(|(n, v)| {
                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (n.as_str().to_owned(), v)
                })
                .collect();
            state.log().push(ReceivedRequest {
                method: method.clone(),
                path: path.clone(),
                query,
                headers,
                body: body.clone(),
            });
        }
        Ok(Incoming {
            method,
            path,
            headers: parts.headers,
            body,
        })
    }
}
