//! The audit log of admin actions (SPEC §11.6), recorded in one place for both renderings: a
//! layer on the admin API's and the admin pages' routes (inside their authentication, which
//! leaves the [`Actor`] in the request) and one on the sign-in form.
//!
//! A write (POST, PATCH, PUT, DELETE) is recorded when it succeeded (2xx or 3xx): who, when,
//! the method, the route pattern and path, the target id (the path's, else the new object's
//! from the response), and the fields of the request body (JSON or form) with every secret
//! replaced by `***`. A sign-in is recorded whatever its outcome, with the username only.
//!
//! The body is read up to [`MAX_BODY`] and handed on unchanged (a longer one goes on as it came,
//! with its fields marked as not recorded), so the handlers see exactly what they saw before.
//! Entries go through a bounded queue to one writer task per router, so the response does not
//! wait for the insert (unless the queue is full) and entries keep their order.

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, OriginalUri, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::state::AppState;
use crate::store::audit::AuditEntry;
use crate::store::Db;

/// The most of a request body (and of a JSON response, for a new object's id) that is read.
pub const MAX_BODY: usize = 256 * 1024;
/// Longer string values are cut to this many characters in the record.
const MAX_VALUE_CHARS: usize = 512;
/// What replaces a secret's value.
pub const MASK: &str = "***";
/// The actor of a request authenticated by the admin token.
pub const TOKEN_ACTOR: &str = "admin-token";

/// Who made an admin request; left in the request's extensions by the admin authentication.
#[derive(Clone, Debug)]
pub struct Actor {
    pub user_id: Option<i64>,
    pub name: String,
}

impl Actor {
    pub fn token() -> Actor {
        Actor {
            user_id: None,
            name: TOKEN_ACTOR.into(),
        }
    }
}

/// The queue to a router's audit writer.
#[derive(Clone)]
pub struct Sink {
    tx: mpsc::Sender<AuditEntry>,
    /// `api` or `ui`: which rendering this router is.
    source: &'static str,
}

impl Sink {
    /// Start the writer task; it ends when the last sender (the router) is dropped, after
    /// writing what is queued.
    pub fn start(db: Db, source: &'static str) -> Sink {
        let (tx, mut rx) = mpsc::channel::<AuditEntry>(1024);
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if let Err(err) = db.insert_audit(&e).await {
                    tracing::error!(error = %err, method = %e.method, path = %e.path, actor = %e.actor,
                        "could not write an audit entry");
                }
            }
        });
        Sink { tx, source }
    }

    async fn send(&self, e: AuditEntry) {
        if self.tx.send(e).await.is_err() {
            tracing::error!("the audit writer has stopped; an entry is lost");
        }
    }
}

fn is_write(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PATCH | Method::PUT | Method::DELETE
    )
}

/// Record the admin writes that succeed (layer inside the admin authentication).
pub async fn record(
    State((st, sink)): State<(AppState, Sink)>,
    req: Request,
    next: Next,
) -> Response {
    if !is_write(req.method()) {
        return next.run(req).await;
    }
    let actor = req
        .extensions()
        .get::<Actor>()
        .cloned()
        .unwrap_or_else(Actor::token);
    let method = req.method().to_string();
    // The path as sent: a nested router sees it without its prefix.
    let path = req
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| req.uri().path(), |u| u.path())
        .to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| path.clone(), |m| m.as_str().to_string());
    let source = sink.source;
    let (parts, body) = req.into_parts();
    let (bytes, body) = buffer(body).await;
    let fields = match &bytes {
        Some(b) => fields_of(&parts.headers, b),
        None => not_recorded(),
    };
    let resp = next.run(Request::from_parts(parts, body)).await;
    let status = resp.status();
    if !(status.is_success() || status.is_redirection()) {
        return resp;
    }
    let mut target = target_of(&route, &path);
    let resp = if target.is_none() && source == "api" && is_json(resp.headers()) {
        let (parts, body) = resp.into_parts();
        let (bytes, body) = buffer(body).await;
        target = bytes.as_deref().and_then(created_id);
        Response::from_parts(parts, body)
    } else {
        if target.is_none() {
            target = redirect_id(resp.headers());
        }
        resp
    };
    sink.send(AuditEntry {
        id: 0,
        created_at: st.now_ms(),
        actor_user_id: actor.user_id,
        actor: actor.name,
        source: source.into(),
        method,
        route: clip(&route, 191),
        path: clip(&path, 1024),
        target: target.map(|t| clip(&t, 191)),
        fields: fields.to_string(),
        status: i64::from(status.as_u16()),
        outcome: "success".into(),
    })
    .await;
    resp
}

/// Record every sign-in attempt on the login form: the username typed and the outcome (a
/// redirect is a session; 429 is the throttle; anything else a failure). Never the password.
pub async fn login(
    State((st, sink)): State<(AppState, Sink)>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let (parts, body) = req.into_parts();
    let (bytes, body) = buffer(body).await;
    let username: String = bytes
        .as_deref()
        .and_then(|b| {
            url::form_urlencoded::parse(b)
                .find(|(k, _)| k == "username")
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default()
        .chars()
        .take(64)
        .collect();
    let resp = next.run(Request::from_parts(parts, body)).await;
    let status = resp.status();
    let outcome = if status.is_redirection() {
        "success"
    } else if status == axum::http::StatusCode::TOO_MANY_REQUESTS {
        "throttled"
    } else {
        "failure"
    };
    let user_id = if outcome == "success" {
        match st.db.find_user_by_username(&username).await {
            Ok(u) => u.map(|u| u.id),
            Err(e) => {
                tracing::warn!(error = %e, "could not look up the admin who signed in");
                None
            }
        }
    } else {
        None
    };
    let mut fields = Map::new();
    fields.insert("username".into(), Value::String(username.clone()));
    fields.insert("password".into(), Value::String(MASK.into()));
    sink.send(AuditEntry {
        id: 0,
        created_at: st.now_ms(),
        actor_user_id: user_id,
        actor: username,
        source: "login".into(),
        method: Method::POST.to_string(),
        route: "/admin/login".into(),
        path: clip(&path, 1024),
        target: user_id.map(|i| i.to_string()),
        fields: Value::Object(fields).to_string(),
        status: i64::from(status.as_u16()),
        outcome: outcome.into(),
    })
    .await;
    resp
}

/// Read a body up to [`MAX_BODY`]: `Some(bytes)` when it was all read, and a body equal to
/// the original to pass on (what was read, then the rest, or the read error, as it came).
async fn buffer(mut body: Body) -> (Option<Bytes>, Body) {
    let mut buf = Vec::new();
    loop {
        match body.frame().await {
            None => {
                let b = Bytes::from(buf);
                return (Some(b.clone()), Body::from(b));
            }
            Some(Ok(frame)) => {
                // Admin requests carry no trailers; only data frames count.
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                    if buf.len() > MAX_BODY {
                        let head = futures_util::stream::once(async move {
                            Ok::<_, axum::Error>(Bytes::from(buf))
                        });
                        return (None, Body::from_stream(head.chain(body.into_data_stream())));
                    }
                }
            }
            Some(Err(e)) => {
                let head = futures_util::stream::iter([Ok(Bytes::from(buf)), Err(e)]);
                return (None, Body::from_stream(head));
            }
        }
    }
}

fn not_recorded() -> Value {
    let mut m = Map::new();
    m.insert(
        "(body)".into(),
        Value::String(format!("not recorded: longer than {MAX_BODY} bytes")),
    );
    Value::Object(m)
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The fields of a request body: a JSON object's members, or a form's fields (a repeated one
/// as a list), with secrets masked and the form's CSRF token left out; `{}` for no body.
pub fn fields_of(headers: &HeaderMap, body: &[u8]) -> Value {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Value::Object(Map::new());
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if form {
        let mut m = Map::new();
        for (k, v) in url::form_urlencoded::parse(body) {
            if k == "csrf" {
                continue;
            }
            let v = if is_secret(&k) {
                Value::String(MASK.into())
            } else {
                Value::String(cut(&v))
            };
            match m.get_mut(k.as_ref()) {
                Some(Value::Array(a)) => a.push(v),
                Some(prev) => *prev = Value::Array(vec![prev.take(), v]),
                None => {
                    m.insert(k.into_owned(), v);
                }
            }
        }
        return Value::Object(m);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => mask(Value::Object(o)),
        Ok(other) => {
            let mut m = Map::new();
            m.insert("(body)".into(), mask(other));
            Value::Object(m)
        }
        Err(_) => {
            let mut m = Map::new();
            m.insert("(body)".into(), Value::String("not JSON or a form".into()));
            Value::Object(m)
        }
    }
}

/// A field whose value is a credential: never recorded.
pub fn is_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "api_key"
        || n == "apikey"
        || n == "authorization"
        || ["secret", "password", "token", "passwd", "csrf"]
            .iter()
            .any(|w| n.contains(w))
}

/// Mask secrets at any depth and cut long strings.
fn mask(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| {
                    let v = if is_secret(&k) {
                        Value::String(MASK.into())
                    } else {
                        mask(v)
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(mask).collect()),
        Value::String(s) => Value::String(cut(&s)),
        other => other,
    }
}

fn cut(s: &str) -> String {
    if s.chars().count() <= MAX_VALUE_CHARS {
        return s.to_string();
    }
    let mut c: String = s.chars().take(MAX_VALUE_CHARS).collect();
    c.push('…');
    c
}

/// At most `max` characters, so the value fits its column on both databases.
fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The first captured segment of the route in the path (`{id}`, or all of a `{*rest}`).
pub fn target_of(route: &str, path: &str) -> Option<String> {
    let mut p = path.split('/');
    for r in route.split('/') {
        let seg = p.next()?;
        if r.starts_with("{*") {
            let rest: Vec<&str> = std::iter::once(seg).chain(p).collect();
            return Some(rest.join("/"));
        }
        if r.starts_with('{') {
            return Some(seg.to_string());
        }
    }
    None
}

/// The `id` of the object a JSON response describes.
fn created_id(body: &[u8]) -> Option<String> {
    match serde_json::from_slice::<Value>(body).ok()?.get("id")? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// The id at the end of a redirect's path (`/admin/users/7?notice=…` → 7).
fn redirect_id(h: &HeaderMap) -> Option<String> {
    let to = h.get(header::LOCATION)?.to_str().ok()?;
    let path = to.split(['?', '#']).next()?;
    let last = path.rsplit('/').next()?;
    (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit())).then(|| last.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        h
    }

    #[test]
    fn secrets_are_masked_at_any_depth_in_json_and_forms() {
        let json = br#"{"name":"a","api_key":"sk-1","nested":{"client_secret":"s","x":[{"Token":"t"}]},"password":"p"}"#;
        let v = fields_of(&headers("application/json"), json);
        assert_eq!(
            v,
            serde_json::json!({"name":"a","api_key":"***","nested":{"client_secret":"***","x":[{"Token":"***"}]},"password":"***"})
        );
        let form = b"csrf=abc&username=bob&password=hunter2&models=a&models=b";
        let v = fields_of(&headers("application/x-www-form-urlencoded"), form);
        assert_eq!(
            v,
            serde_json::json!({"username":"bob","password":"***","models":["a","b"]})
        );
        assert_eq!(
            fields_of(&headers("application/json"), b""),
            serde_json::json!({})
        );
    }

    #[test]
    fn targets_come_from_the_path_pattern_or_the_redirect() {
        assert_eq!(
            target_of(
                "/api/admin/users/{id}/packages",
                "/api/admin/users/12/packages"
            ),
            Some("12".into())
        );
        assert_eq!(
            target_of("/api/admin/models/{*model}", "/api/admin/models/org/m-1"),
            Some("org/m-1".into())
        );
        assert_eq!(target_of("/api/admin/users", "/api/admin/users"), None);
        let mut h = HeaderMap::new();
        h.insert(header::LOCATION, "/admin/users/7?notice=x".parse().unwrap());
        assert_eq!(redirect_id(&h), Some("7".into()));
        h.insert(
            header::LOCATION,
            "/admin/accounts?notice=x".parse().unwrap(),
        );
        assert_eq!(redirect_id(&h), None);
        assert_eq!(created_id(br#"{"id": 5, "key": "sk-x"}"#), Some("5".into()));
    }
}
