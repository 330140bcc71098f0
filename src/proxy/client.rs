//! The HTTP client for upstream calls: HTTP/1.1 over plain TCP or rustls (webpki roots), with
//! keep-alive connections kept in our own pool, TCP_NODELAY and a connect timeout. No
//! redirects, no decompression, no cookies: the proxy passes bytes through.
//!
//! Each connection is driven by the task that uses it: sending a request polls the connection
//! until the response head is in, and the response body ([`UpstreamBody`]) polls it while it
//! is read. hyper's pooled client instead runs every connection as a task of its own and hands
//! the body over one chunk at a time through a channel, which costs two task wake-ups per SSE
//! event; driven inline, a burst of events that arrived in one read is decoded and forwarded
//! in one poll, as nginx does (bench/HISTORY.md). When the body has been read to its end the
//! connection goes back to the pool; a body dropped early closes its connection, which is how
//! a client's disconnect cancels the upstream request.
//!
//! hyper's low-level `client::conn::http1` is used rather than reqwest or hyper-util's pooled
//! client: their per-request layers and the per-connection task were a measurable share of the
//! gateway's CPU (bench/HISTORY.md). HTTP/2 is not offered to upstreams (ALPN http/1.1 only),
//! as nginx does.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, Response, Uri};
use foldhash::HashMap;
use http_body_util::Full;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tower::ServiceExt;

/// Idle connections older than this are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream host.
const MAX_IDLE_PER_HOST: usize = 1024;

/// Why a request got no response head.
pub enum SendError {
    /// The connection could not be made or broke before a response (message for the log).
    Connect(String),
    /// Connecting took longer than `upstream.connect_timeout_secs`.
    ConnectTimeout(String),
}

type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
type Conn = http1::Connection<Io, Full<Bytes>>;

/// One upstream connection: the request sender and the connection future that does its I/O.
struct Pooled {
    sender: http1::SendRequest<Full<Bytes>>,
    /// None once the connection has finished. It is dropped then, which fails a request
    /// still queued on it with the request handed back (hyper's "connection closed").
    conn: Option<Pin<Box<Conn>>>,
}

impl Pooled {
    /// Poll the connection's I/O once; false once it has finished.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(c) = self.conn.as_mut() {
            if c.as_mut().poll(cx).is_ready() {
                self.conn = None;
            }
        }
        self.conn.is_some()
    }

    /// Still usable for a new request (checked without waiting).
    fn reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.drive(&mut cx) && self.sender.is_ready()
    }
}

struct Idle {
    conn: Pooled,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<String, VecDeque<Idle>>>,
}

impl Pool {
    /// The most recently used idle connection to `host` that is still open.
    fn checkout(&self, host: &str) -> Option<Pooled> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(host)?;
        while let Some(mut c) = list.pop_back() {
            if c.since.elapsed() < IDLE_TIMEOUT && c.conn.reusable() {
                return Some(c.conn);
            }
        }
        None
    }

    fn put_back(&self, host: String, conn: Pooled) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(host).or_default();
        while list
            .front()
            .is_some_and(|c| c.since.elapsed() >= IDLE_TIMEOUT)
        {
            list.pop_front();
        }
        if list.len() >= MAX_IDLE_PER_HOST {
            list.pop_front();
        }
        list.push_back(Idle {
            conn,
            since: Instant::now(),
        });
    }
}

#[derive(Clone)]
pub struct UpstreamClient {
    connector: HttpsConnector<HttpConnector>,
    pool: Arc<Pool>,
}

/// A response body that drives its connection while it is read, and returns the connection
/// to the pool once the body has ended.
pub struct UpstreamBody {
    body: Source,
    conn: Option<Pooled>,
    host: String,
    pool: Arc<Pool>,
}

enum Source {
    Live(Incoming),
    /// Already read (an error body the gateway looked into before passing it on).
    Read(Option<Bytes>),
}

impl UpstreamBody {
    /// A body that was read whole, to be passed on as it was.
    pub fn read(bytes: Bytes) -> UpstreamBody {
        UpstreamBody {
            body: Source::Read(Some(bytes)),
            conn: None,
            host: String::new(),
            pool: Arc::default(),
        }
    }
}

pub type UpstreamResponse = Response<UpstreamBody>;

impl UpstreamClient {
    pub fn new(connect_timeout: Duration) -> UpstreamClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        UpstreamClient {
            connector,
            pool: Arc::default(),
        }
    }

    /// POST `body` to `url` with exactly `headers` (plus Host and Content-Length).
    pub async fn post(
        &self,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamResponse, SendError> {
        self.send(Method::POST, url, headers, body).await
    }

    /// GET `url` with exactly `headers` (plus Host): the account probes (SPEC §11.2).
    pub async fn get(&self, url: &str, headers: HeaderMap) -> Result<UpstreamResponse, SendError> {
        self.send(Method::GET, url, headers, Bytes::new()).await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<UpstreamResponse, SendError> {
        let invalid = |e: &dyn std::fmt::Display| {
            SendError::Connect(format!("invalid upstream URL {url}: {e}"))
        };
        let uri: Uri = url.parse().map_err(|e| invalid(&e))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(invalid(&"scheme and host are required"));
        };
        // The pool key and the origin-form target from the parsed parts (no second parse,
        // no formatting machinery: both were visible per request in callgrind).
        let (scheme, authority) = (scheme.as_str(), authority.as_str());
        let mut host = String::with_capacity(scheme.len() + 3 + authority.len());
        host.push_str(scheme);
        host.push_str("://");
        host.push_str(authority);
        let host_header = HeaderValue::from_str(authority).map_err(|e| invalid(&e))?;
        let path = match uri.path_and_query() {
            Some(pq) => {
                let mut parts = axum::http::uri::Parts::default();
                parts.path_and_query = Some(pq.clone());
                Uri::from_parts(parts).map_err(|e| invalid(&e))?
            }
            None => Uri::from_static("/"),
        };
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = path;
        *req.headers_mut() = headers;
        req.headers_mut().insert(header::HOST, host_header);

        // A kept-alive connection that fails before it wrote the request (hyper hands the
        // request back: the connection was closed by upstream just as it was reused) is
        // replaced by another, as hyper-util's pooled client does. A request that may have
        // reached upstream is never sent again.
        while let Some(conn) = self.pool.checkout(&host) {
            match send(conn, req).await {
                Ok((head, conn)) => return Ok(self.body(head, conn, host)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(classify(e.error(), false)),
                },
            }
        }
        let conn = self.connect(uri).await?;
        match send(conn, req).await {
            Ok((head, conn)) => Ok(self.body(head, conn, host)),
            Err(e) => Err(classify(e.error(), false)),
        }
    }

    fn body(&self, head: Response<Incoming>, conn: Pooled, host: String) -> UpstreamResponse {
        head.map(|body| UpstreamBody {
            body: Source::Live(body),
            conn: Some(conn),
            host,
            pool: self.pool.clone(),
        })
    }

    async fn connect(&self, uri: Uri) -> Result<Pooled, SendError> {
        let io = self
            .connector
            .clone()
            .oneshot(uri)
            .await
            .map_err(|e| classify(&*e, true))?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| classify(&e, true))?;
        Ok(Pooled {
            sender,
            conn: Some(Box::pin(conn)),
        })
    }
}

/// Send one request on `conn`, driving the connection until the response head is in.
async fn send(
    mut conn: Pooled,
    req: Request<Full<Bytes>>,
) -> Result<(Response<Incoming>, Pooled), hyper::client::conn::TrySendError<Request<Full<Bytes>>>> {
    let mut response = std::pin::pin!(conn.sender.try_send_request(req));
    let head = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = response.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if conn.drive(cx) {
            return Poll::Pending;
        }
        // The connection finished (and was dropped): the response resolves with an error.
        response.as_mut().poll(cx)
    })
    .await?;
    Ok((head, conn))
}

/// A failure before the response head: a connect timeout or any other (`connecting`: it
/// happened while the connection was being made).
fn classify(e: &(dyn std::error::Error + 'static), connecting: bool) -> SendError {
    let timed_out = source_chain(e).any(|s| {
        s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    });
    let message = describe(e);
    if connecting && timed_out {
        SendError::ConnectTimeout(format!("connecting to upstream timed out: {message}"))
    } else {
        SendError::Connect(format!("upstream unreachable: {message}"))
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let body = match &mut this.body {
            Source::Live(body) => body,
            Source::Read(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        // The connection decodes at most one chunk into the body's channel per poll, so it is
        // polled first: the body then has the next chunk ready without a wasted empty poll.
        if let Some(conn) = this.conn.as_mut() {
            conn.drive(cx);
        }
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some(mut conn) = this.conn.take() {
                    // The connection turns idle on its next poll; then it can be reused.
                    if conn.drive(cx) && conn.sender.is_ready() {
                        this.pool.put_back(std::mem::take(&mut this.host), conn);
                    }
                }
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Source::Live(body) => body.is_end_stream(),
            Source::Read(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Source::Live(body) => body.size_hint(),
            Source::Read(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

fn source_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// The error and its causes on one line ("tcp connect error: Connection refused …").
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A plain HTTP/1.1 server on loopback that answers every request with `ok` and counts its
    /// connections; with `close_after_each` it closes the connection after each answer
    /// (without saying so, as an upstream whose keep-alive timed out does).
    async fn server(close_after_each: bool) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    // More bytes into `buf`; false once the client is gone.
                    async fn read_more(
                        sock: &mut tokio::net::TcpStream,
                        buf: &mut Vec<u8>,
                        tmp: &mut [u8],
                    ) -> bool {
                        match sock.read(tmp).await {
                            Ok(0) | Err(_) => false,
                            Ok(n) => {
                                buf.extend_from_slice(&tmp[..n]);
                                true
                            }
                        }
                    }
                    loop {
                        // One request: its head, then content-length bytes of body.
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            if !read_more(&mut sock, &mut buf, &mut tmp).await {
                                return;
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < head_end + len {
                            if !read_more(&mut sock, &mut buf, &mut tmp).await {
                                return;
                            }
                        }
                        buf.drain(..head_end + len);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if sock.write_all(answer).await.is_err() {
                            return;
                        }
                        if close_after_each {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}/v1/chat/completions"), accepted)
    }

    async fn post(client: &UpstreamClient, url: &str) -> UpstreamResponse {
        match client.post(url, HeaderMap::new(), Bytes::from("{}")).await {
            Ok(r) => r,
            Err(SendError::Connect(m) | SendError::ConnectTimeout(m)) => panic!("{m}"),
        }
    }

    async fn call(client: &UpstreamClient, url: &str) -> String {
        let body = post(client, url)
            .await
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_connection_is_reused_after_its_body_was_read() {
        let (url, accepted) = server(false).await;
        let client = UpstreamClient::new(Duration::from_secs(5));
        for _ in 0..5 {
            assert_eq!(call(&client, &url).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_closes_its_connection() {
        let (url, accepted) = server(false).await;
        let client = UpstreamClient::new(Duration::from_secs(5));
        drop(post(&client, &url).await);
        assert_eq!(call(&client, &url).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_closed_by_upstream_while_idle_is_not_reused() {
        let (url, accepted) = server(true).await;
        let client = UpstreamClient::new(Duration::from_secs(5));
        for n in 1..=3 {
            assert_eq!(call(&client, &url).await, "ok");
            // Let upstream's close arrive before the next request.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(accepted.load(Ordering::SeqCst), n);
        }
    }

    #[tokio::test]
    async fn requests_right_after_upstream_closed_the_connection_still_succeed() {
        // No pause: the close may or may not have arrived when the next request is sent;
        // either the pool sees it, or hyper hands the unsent request back and it goes out
        // on a new connection.
        let (url, accepted) = server(true).await;
        let client = UpstreamClient::new(Duration::from_secs(5));
        for _ in 0..30 {
            assert_eq!(call(&client, &url).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 30);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = UpstreamClient::new(Duration::from_secs(5));
        match client
            .post(&format!("http://{addr}/v1"), HeaderMap::new(), Bytes::new())
            .await
        {
            Err(SendError::Connect(m)) => assert!(m.contains("upstream unreachable"), "{m}"),
            Err(SendError::ConnectTimeout(m)) => panic!("not a timeout: {m}"),
            Ok(_) => panic!("nothing listens there"),
        }
    }
}
