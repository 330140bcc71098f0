//! The HTTP client for upstream calls: hyper-util's pooled client (keep-alive, TCP_NODELAY,
//! connect timeout) over rustls with the webpki roots, HTTP/1.1 and, over TLS, HTTP/2 by ALPN.
//! No redirects, no decompression, no cookies: the proxy passes bytes through.
//!
//! hyper directly rather than reqwest: reqwest's per-request layers (URL parsing with IDNA,
//! its body and timeout wrappers, the boxed futures) were a measurable share of the gateway's
//! CPU per request (bench/HISTORY.md).

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Why a request got no response head.
pub enum SendError {
    /// The connection could not be made or broke before a response (message for the log).
    Connect(String),
    /// Connecting took longer than `upstream.connect_timeout_secs`.
    ConnectTimeout(String),
}

#[derive(Clone)]
pub struct UpstreamClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl UpstreamClient {
    pub fn new(connect_timeout: Duration) -> UpstreamClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        UpstreamClient { inner }
    }

    /// POST `body` to `url` with exactly `headers` (plus Host and Content-Length).
    pub async fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Incoming>, SendError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| SendError::Connect(format!("invalid upstream URL {url}: {e}")))?;
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        self.inner.request(req).await.map_err(|e| {
            let timed_out = source_chain(&e).any(|s| {
                s.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            });
            let message = describe(&e);
            if e.is_connect() && timed_out {
                SendError::ConnectTimeout(format!("connecting to upstream timed out: {message}"))
            } else {
                SendError::Connect(format!("upstream unreachable: {message}"))
            }
        })
    }
}

fn source_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// The error and its causes on one line ("client error (Connect): tcp connect error: …").
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for s in source_chain(e) {
        let t = s.to_string();
        if !parts.last().is_some_and(|p| p.contains(&t)) {
            parts.push(t);
        }
    }
    parts.join(": ")
}
