//! The HTTP client for upstream calls: HTTP/1.1 over plain TCP or rustls (webpki roots), with
//! keep-alive connections kept in our own pool, TCP_NODELAY and a connect timeout. No
//! redirects, no decompression, no cookies: the proxy passes bytes through.
//!
//! The exchange on a connection is our own (bench/HISTORY.md, ninth round): the request head
//! is written with its body in one `writev`, the response head is parsed with httparse, and
//! the body is framed by Content-Length, chunked encoding or the connection's end. hyper's
//! `client::conn::http1` did the same with a request channel, a dispatcher and a body
//! channel between the caller and the socket: about a fifth of the gateway's instructions per
//! answer. Everything here runs in the task that uses the connection: sending a request
//! writes and then reads until the response head is in, and the response body
//! ([`UpstreamBody`]) reads the socket while it is read, so a burst of SSE events that
//! arrived in one read is decoded and forwarded in one poll, as nginx does. When the body has
//! been read to its end the connection goes back to the pool; a body dropped early closes its
//! connection, which is how a client's disconnect cancels the upstream request.
//!
//! HTTP/2 is not offered to upstreams (ALPN http/1.1 only), as nginx does. Not supported, as
//! no LLM API needs them: upgrades (101) and reading the answer while a large request body is
//! still being written (an upstream that answers early and closes fails the attempt).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri, Version};
use bytes::{Buf, BytesMut};
use foldhash::HashMap;
use hyper::body::{Frame, SizeHint};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt;

/// Idle connections older than this are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream host.
const MAX_IDLE_PER_HOST: usize = 1024;
/// Largest response head (hyper's limit is about the same order); larger is an error.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a response head, as hyper.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (with extensions) and longest trailer line read.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Room made in the read buffer when it is nearly full.
const READ_SIZE: usize = 16 * 1024;

/// Why a request got no response head.
pub enum SendError {
    /// The connection could not be made or broke before a response (message for the log).
    Connect(String),
    /// Connecting took longer than `upstream.connect_timeout_secs`.
    ConnectTimeout(String),
}

/// Why a response body could not be read to its end.
#[derive(Debug)]
pub struct BodyError(String);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BodyError {}

/// The hop-by-hop headers (RFC 9110 §7.6.1 and the old `keep-alive`, `proxy-connection`): they
/// describe one connection, so this client neither sends a caller's nor passes upstream's on.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

/// A request's header lines as they go on the wire (`name: value\r\n` each), written once by
/// the caller: no map is built, hashed and walked again for one request.
#[derive(Default)]
pub struct HeaderLines(Vec<u8>);

impl HeaderLines {
    pub fn with_capacity(bytes: usize) -> HeaderLines {
        HeaderLines(Vec::with_capacity(bytes))
    }

    /// Add a header from a map (its name and value are valid already).
    pub fn push(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.push_raw(name.as_str(), value.as_bytes());
    }

    /// Add a header whose value is `prefix` and `value`; false (nothing added) when that is
    /// not a valid header value (only visible ASCII, space and tab, as `HeaderValue::from_str`).
    pub fn push_str(&mut self, name: &'static str, prefix: &str, value: &str) -> bool {
        let valid = |s: &str| s.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b));
        if !valid(prefix) || !valid(value) {
            return false;
        }
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(prefix.as_bytes());
        self.0.extend_from_slice(value.as_bytes());
        self.0.extend_from_slice(b"\r\n");
        true
    }

    fn push_raw(&mut self, name: &str, value: &[u8]) {
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(value);
        self.0.extend_from_slice(b"\r\n");
    }

    /// The (name, value) pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        std::str::from_utf8(&self.0)
            .unwrap_or("")
            .split_terminator("\r\n")
            .filter_map(|line| line.split_once(": "))
    }
}

impl From<&HeaderMap> for HeaderLines {
    fn from(map: &HeaderMap) -> HeaderLines {
        let mut lines = HeaderLines::with_capacity(map.len() * 48);
        for (name, value) in map {
            lines.push(name, value);
        }
        lines
    }
}

type TlsStream = tokio_rustls::client::TlsStream<TokioIo<TokioIo<TcpStream>>>;

/// An upstream socket, plain or TLS.
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl From<MaybeHttpsStream<TokioIo<TcpStream>>> for Io {
    fn from(s: MaybeHttpsStream<TokioIo<TcpStream>>) -> Io {
        match s {
            MaybeHttpsStream::Http(tcp) => Io::Plain(tcp.into_inner()),
            MaybeHttpsStream::Https(tls) => Io::Tls(Box::new(tls.into_inner())),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One upstream connection and the bytes read from it that nobody has taken yet.
struct Conn {
    io: Io,
    buf: BytesMut,
}

impl Conn {
    fn new(io: Io) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Read more into the buffer: the number of bytes read, 0 at the connection's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Open and quiet (checked without waiting): upstream has neither closed it nor sent
    /// anything unasked, so a request can go out on it.
    fn reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        self.buf.is_empty()
            && Pin::new(&mut self.io)
                .poll_read(&mut cx, &mut probe)
                .is_pending()
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<String, VecDeque<Idle>>>,
}

impl Pool {
    /// The most recently used idle connection to `host` that is still open.
    fn checkout(&self, host: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(host)?;
        while let Some(mut c) = list.pop_back() {
            if c.since.elapsed() < IDLE_TIMEOUT && c.conn.reusable() {
                return Some(c.conn);
            }
        }
        None
    }

    fn put_back(&self, host: String, conn: Conn) {
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

/// A response body that reads its connection while it is read, and returns the connection
/// to the pool once the body has ended.
pub struct UpstreamBody {
    source: Source,
}

enum Source {
    Live(Live),
    /// Already read (an error body the gateway looked into before passing it on).
    Read(Option<Bytes>),
    /// Read to its end.
    Done,
}

/// A body still on its connection.
struct Live {
    conn: Conn,
    framing: Framing,
    /// The connection may carry another request once this body has ended.
    keep_alive: bool,
    host: String,
    pool: Arc<Pool>,
}

/// How the body's end is known.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// Content-Length: the bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Neither: the body ends with the connection.
    UntilClose,
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: its bytes still to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty line (passed over).
    Trailers,
}

impl UpstreamBody {
    /// A body that was read whole, to be passed on as it was.
    pub fn read(bytes: Bytes) -> UpstreamBody {
        UpstreamBody {
            source: Source::Read(Some(bytes)),
        }
    }
}

pub type UpstreamResponse = Response<UpstreamBody>;

/// A response head as parsed, with how its body is framed.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// Why an exchange gave no response head.
enum ExchangeError {
    /// Nothing of the request was written (the connection was already broken): it may go out
    /// on another connection.
    Unsent(String),
    Failed(String),
}

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

    /// POST `body` to `url` with exactly `headers` (plus Host and Content-Length; the caller
    /// leaves out Host, Content-Length and the hop-by-hop headers).
    pub async fn post(
        &self,
        url: &str,
        headers: HeaderLines,
        body: Bytes,
    ) -> Result<UpstreamResponse, SendError> {
        self.send(Method::POST, url, &headers, body).await
    }

    /// GET `url` with exactly `headers` (plus Host): the account probes (SPEC §11.2).
    pub async fn get(
        &self,
        url: &str,
        headers: HeaderLines,
    ) -> Result<UpstreamResponse, SendError> {
        self.send(Method::GET, url, &headers, Bytes::new()).await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &HeaderLines,
        body: Bytes,
    ) -> Result<UpstreamResponse, SendError> {
        let invalid = |e: &dyn std::fmt::Display| {
            SendError::Connect(format!("invalid upstream URL {url}: {e}"))
        };
        let uri: Uri = url.parse().map_err(|e| invalid(&e))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(invalid(&"scheme and host are required"));
        };
        // The pool key: scheme and authority.
        let (scheme, authority) = (scheme.as_str(), authority.as_str());
        let mut host = String::with_capacity(scheme.len() + 3 + authority.len());
        host.push_str(scheme);
        host.push_str("://");
        host.push_str(authority);
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let head = request_head(&method, target, authority, headers, body.len());

        // A kept-alive connection found broken before any of the request was written (upstream
        // closed it just as it was reused) is replaced by another, as hyper-util's pooled
        // client does. A request that may have reached upstream is never sent again.
        while let Some(conn) = self.pool.checkout(&host) {
            match exchange(conn, &head, &body).await {
                Ok((head, conn)) => return Ok(self.response(head, conn, host)),
                Err(ExchangeError::Unsent(_)) => continue,
                Err(ExchangeError::Failed(m)) => {
                    return Err(SendError::Connect(format!("upstream unreachable: {m}")))
                }
            }
        }
        let conn = self.connect(uri).await?;
        match exchange(conn, &head, &body).await {
            Ok((head, conn)) => Ok(self.response(head, conn, host)),
            Err(ExchangeError::Unsent(m) | ExchangeError::Failed(m)) => {
                Err(SendError::Connect(format!("upstream unreachable: {m}")))
            }
        }
    }

    fn response(&self, head: Head, conn: Conn, host: String) -> UpstreamResponse {
        let mut r = Response::new(UpstreamBody {
            source: Source::Live(Live {
                conn,
                framing: head.framing,
                keep_alive: head.keep_alive,
                host,
                pool: self.pool.clone(),
            }),
        });
        *r.status_mut() = head.status;
        *r.version_mut() = head.version;
        *r.headers_mut() = head.headers;
        r
    }

    async fn connect(&self, uri: Uri) -> Result<Conn, SendError> {
        let io = self
            .connector
            .clone()
            .oneshot(uri)
            .await
            .map_err(|e| classify(&*e, true))?;
        Ok(Conn::new(Io::from(io)))
    }
}

/// The request line, Host, the caller's header lines and a Content-Length (except on a GET
/// without a body), as hyper would write them (lower-case names).
fn request_head(
    method: &Method,
    target: &str,
    authority: &str,
    headers: &HeaderLines,
    body_len: usize,
) -> Vec<u8> {
    let mut h = Vec::with_capacity(80 + target.len() + authority.len() + headers.0.len());
    h.extend_from_slice(method.as_str().as_bytes());
    h.push(b' ');
    h.extend_from_slice(target.as_bytes());
    h.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    h.extend_from_slice(authority.as_bytes());
    h.extend_from_slice(b"\r\n");
    h.extend_from_slice(&headers.0);
    if *method != Method::GET || body_len > 0 {
        h.extend_from_slice(b"content-length: ");
        h.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    h.extend_from_slice(b"\r\n");
    h
}

/// Write the request on `conn` and read until its response head is in (interim 1xx heads
/// are passed over).
async fn exchange(mut conn: Conn, head: &[u8], body: &[u8]) -> Result<(Head, Conn), ExchangeError> {
    let mut written = 0;
    let total = head.len() + body.len();
    while written < total {
        let wrote = if written < head.len() {
            let parts = [IoSlice::new(&head[written..]), IoSlice::new(body)];
            conn.io.write_vectored(&parts).await
        } else {
            conn.io.write(&body[written - head.len()..]).await
        };
        match wrote {
            Ok(0) => {
                return Err(ExchangeError::Failed(
                    "upstream stopped taking the request".into(),
                ))
            }
            Ok(n) => written += n,
            Err(e) if written == 0 => return Err(ExchangeError::Unsent(e.to_string())),
            Err(e) => return Err(ExchangeError::Failed(format!("writing the request: {e}"))),
        }
    }
    conn.io
        .flush()
        .await
        .map_err(|e| ExchangeError::Failed(format!("writing the request: {e}")))?;
    loop {
        if let Some(head) = parse_head(&mut conn.buf).map_err(ExchangeError::Failed)? {
            if head.status.is_informational() {
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(ExchangeError::Failed("upstream switched protocols".into()));
                }
                continue;
            }
            return Ok((head, conn));
        }
        let n = std::future::poll_fn(|cx| conn.poll_fill(cx))
            .await
            .map_err(|e| ExchangeError::Failed(format!("reading the response: {e}")))?;
        if n == 0 {
            return Err(ExchangeError::Failed(
                "connection closed before a response".into(),
            ));
        }
    }
}

/// A whole response head from the front of `buf` (taken out of it), None while it is
/// incomplete. Header values are slices of the head's bytes, not copies. The headers kept are
/// the end-to-end ones: the framing ones (Content-Length, Transfer-Encoding) and the other
/// hop-by-hop ones are read here and go no further, since whoever passes the body on frames
/// it anew.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, String> {
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
        Ok(_) => return Err(format!("response head larger than {MAX_HEAD} bytes")),
        Err(e) => return Err(format!("malformed response head: {e}")),
    };
    let code = resp.code.unwrap_or_default();
    let status =
        StatusCode::from_u16(code).map_err(|_| format!("invalid response status {code}"))?;
    let version = match resp.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Offsets into the head (name start and end, value start and end), so that the values
    // can be slices of its bytes once it is split off the buffer (the parse borrows the
    // buffer). On the stack for the usual count: a 100-entry array was a 3 KB memset.
    let base = buf.as_ptr() as usize;
    let count = resp.headers.len();
    let mut inline = [(0u32, 0u32, 0u32, 0u32); 32];
    let mut heap = Vec::new();
    let spans = if count <= inline.len() {
        &mut inline[..count]
    } else {
        heap.resize(count, (0, 0, 0, 0));
        &mut heap[..]
    };
    for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        // Within MAX_HEAD, so u32 holds them.
        *span = (
            name as u32,
            (name + h.name.len()) as u32,
            value as u32,
            (value + h.value.len()) as u32,
        );
    }
    let bytes = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut has_te = false;
    let mut close = version == Version::HTTP_10;
    for &(n, n_end, v, v_end) in spans.iter() {
        let name = HeaderName::from_bytes(&bytes[n as usize..n_end as usize])
            .map_err(|_| "invalid response header name".to_string())?;
        let value = HeaderValue::from_maybe_shared(bytes.slice(v as usize..v_end as usize))
            .map_err(|_| format!("invalid value of response header {name}"))?;
        if name == axum::http::header::CONTENT_LENGTH {
            let n = value
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| "invalid Content-Length in the response".to_string())?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Lengths in the response".into());
            }
            length = Some(n);
        } else if name == axum::http::header::TRANSFER_ENCODING {
            has_te = true;
            // Chunked only counts as the last coding (RFC 9112 §6.3).
            chunked = value
                .to_str()
                .ok()
                .and_then(|s| s.rsplit(',').next())
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if name == axum::http::header::CONNECTION {
            for token in value.to_str().unwrap_or("").split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && version == Version::HTTP_10 {
                    close = false;
                }
            }
        } else if !HOP_BY_HOP.contains(&name.as_str()) {
            headers.append(name, value);
        }
    }
    let framing = if code == 204 || code == 304 || (100..200).contains(&code) {
        Framing::Length(0)
    } else if has_te {
        // Transfer-Encoding overrides a Content-Length (RFC 9112 §6.3).
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::UntilClose
        }
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let keep_alive = !close && framing != Framing::UntilClose;
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

impl Live {
    /// The body's next bytes, None at its end.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, BodyError>> {
        let Live { conn, framing, .. } = self;
        loop {
            let buf = &mut conn.buf;
            match framing {
                Framing::Length(0) => return Poll::Ready(Ok(None)),
                Framing::Length(rest) if !buf.is_empty() => {
                    let n = (*rest).min(buf.len() as u64);
                    *rest -= n;
                    return Poll::Ready(Ok(Some(buf.split_to(n as usize).freeze())));
                }
                Framing::UntilClose if !buf.is_empty() => {
                    return Poll::Ready(Ok(Some(buf.split().freeze())));
                }
                Framing::Chunked(chunk) => match *chunk {
                    Chunk::Size if !buf.is_empty() => match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            buf.advance(used);
                            *chunk = if size == 0 {
                                Chunk::Trailers
                            } else {
                                Chunk::Data(size)
                            };
                            continue;
                        }
                        Ok(httparse::Status::Partial) if buf.len() <= MAX_CHUNK_LINE => {}
                        _ => return Poll::Ready(Err(BodyError("malformed chunk size".into()))),
                    },
                    Chunk::Data(rest) if !buf.is_empty() => {
                        let n = rest.min(buf.len() as u64);
                        *chunk = if n == rest {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(rest - n)
                        };
                        return Poll::Ready(Ok(Some(buf.split_to(n as usize).freeze())));
                    }
                    Chunk::DataEnd if buf.len() >= 2 => {
                        if &buf[..2] != b"\r\n" {
                            return Poll::Ready(Err(BodyError("malformed chunk end".into())));
                        }
                        buf.advance(2);
                        *chunk = Chunk::Size;
                        continue;
                    }
                    Chunk::Trailers if !buf.is_empty() => {
                        match memchr::memmem::find(buf, b"\r\n") {
                            Some(0) => {
                                buf.advance(2);
                                *framing = Framing::Length(0);
                                continue;
                            }
                            Some(line) => {
                                buf.advance(line + 2);
                                continue;
                            }
                            None if buf.len() <= MAX_CHUNK_LINE => {}
                            None => {
                                return Poll::Ready(Err(BodyError("trailer line too long".into())))
                            }
                        }
                    }
                    _ => {}
                },
                _ => {}
            }
            // More bytes are needed.
            let n = match ready!(conn.poll_fill(cx)) {
                Ok(n) => n,
                Err(e) => return Poll::Ready(Err(BodyError(format!("reading the body: {e}")))),
            };
            if n == 0 {
                return Poll::Ready(match framing {
                    Framing::UntilClose => Ok(None),
                    _ => Err(BodyError(
                        "upstream closed the connection before the body ended".into(),
                    )),
                });
            }
        }
    }
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
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let live = match &mut this.source {
            Source::Live(live) => live,
            Source::Read(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Done => return Poll::Ready(None),
        };
        match ready!(live.poll_data(cx)) {
            Ok(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Ok(None) => {
                if let Source::Live(live) = std::mem::replace(&mut this.source, Source::Done) {
                    // Bytes after the body's end are not ours to pass on: such a connection
                    // is not reused.
                    if live.keep_alive && live.conn.buf.is_empty() {
                        live.pool.put_back(live.host, live.conn);
                    }
                }
                Poll::Ready(None)
            }
            Err(e) => {
                this.source = Source::Done;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Live(live) => live.framing == Framing::Length(0),
            Source::Read(bytes) => bytes.is_none(),
            Source::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Live(Live {
                framing: Framing::Length(n),
                ..
            }) => SizeHint::with_exact(*n),
            Source::Live(_) => SizeHint::default(),
            Source::Read(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Source::Done => SizeHint::with_exact(0),
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

    /// A loopback HTTP/1.1 upstream: it reads each request (head, then Content-Length bytes of
    /// body), keeps it, and answers with `answer`'s pieces, written one at a time a moment
    /// apart; with `close_after_each` it then closes the connection without saying so (as an
    /// upstream whose keep-alive timed out does).
    struct Upstream {
        url: String,
        accepted: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    async fn scripted(answer: Vec<Vec<u8>>, close_after_each: bool) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (count, kept) = (accepted.clone(), requests.clone());
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                sock.set_nodelay(true).unwrap();
                let (kept, answer) = (kept.clone(), answer.clone());
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
                        let request: Vec<u8> = buf.drain(..head_end + len).collect();
                        kept.lock().unwrap().push(request);
                        for (n, piece) in answer.iter().enumerate() {
                            if n > 0 {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            if sock.write_all(piece).await.is_err() {
                                return;
                            }
                        }
                        if close_after_each {
                            return;
                        }
                    }
                });
            }
        });
        Upstream {
            url: format!("http://{addr}/v1/chat/completions"),
            accepted,
            requests,
        }
    }

    /// An upstream that answers every request with `ok`.
    async fn server(close_after_each: bool) -> (String, Arc<AtomicUsize>) {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
        let up = scripted(vec![answer], close_after_each).await;
        (up.url, up.accepted)
    }

    /// `answer` split into pieces of `size` bytes.
    fn pieces(answer: &[u8], size: usize) -> Vec<Vec<u8>> {
        answer.chunks(size).map(<[u8]>::to_vec).collect()
    }

    /// The error of a request that got no response head.
    async fn send_error(client: &UpstreamClient, url: &str) -> String {
        match client
            .post(url, HeaderLines::default(), Bytes::from("{}"))
            .await
        {
            Ok(r) => panic!("a response: {}", r.status()),
            Err(SendError::Connect(m) | SendError::ConnectTimeout(m)) => m,
        }
    }

    async fn post(client: &UpstreamClient, url: &str) -> UpstreamResponse {
        match client
            .post(url, HeaderLines::default(), Bytes::from("{}"))
            .await
        {
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
            .post(
                &format!("http://{addr}/v1"),
                HeaderLines::default(),
                Bytes::new(),
            )
            .await
        {
            Err(SendError::Connect(m)) => assert!(m.contains("upstream unreachable"), "{m}"),
            Err(SendError::ConnectTimeout(m)) => panic!("not a timeout: {m}"),
            Ok(_) => panic!("nothing listens there"),
        }
    }

    #[tokio::test]
    async fn the_request_goes_out_with_its_host_and_length() {
        let up = scripted(
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()],
            false,
        )
        .await;
        let client = UpstreamClient::new(Duration::from_secs(5));
        let mut headers = HeaderLines::default();
        assert!(headers.push_str("x-custom", "", "a"));
        let url = format!("{}?beta=true", up.url);
        let r = client.post(&url, headers, Bytes::from(r#"{"a":1}"#));
        let body = match r.await {
            Ok(r) => r.into_body().collect().await.unwrap().to_bytes(),
            Err(_) => panic!("no response"),
        };
        assert_eq!(body, "ok");
        let get = client.get(&up.url, HeaderLines::default());
        assert!(get.await.is_ok());

        let requests = up.requests.lock().unwrap().clone();
        let post = String::from_utf8(requests[0].clone()).unwrap();
        let authority = up
            .url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap();
        assert_eq!(
            post,
            format!(
                "POST /v1/chat/completions?beta=true HTTP/1.1\r\nhost: {authority}\r\n\
                 x-custom: a\r\ncontent-length: 7\r\n\r\n{{\"a\":1}}"
            )
        );
        let get = String::from_utf8(requests[1].clone()).unwrap();
        assert_eq!(
            get,
            format!("GET /v1/chat/completions HTTP/1.1\r\nhost: {authority}\r\n\r\n"),
            "a GET without a body has no Content-Length"
        );
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_chunked_body_in_small_pieces_is_decoded_and_its_connection_reused() {
        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\
            content-type: text/event-stream\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n\
            0\r\nx-trailer: t\r\n\r\n";
        let up = scripted(pieces(answer, 3), false).await;
        let client = UpstreamClient::new(Duration::from_secs(5));
        for _ in 0..2 {
            let r = post(&client, &up.url).await;
            assert_eq!(r.headers()["content-type"], "text/event-stream");
            let body = r.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "hello, world");
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_content_length_body_in_pieces_is_read_whole() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyz";
        let up = scripted(pieces(answer, 7), false).await;
        let client = UpstreamClient::new(Duration::from_secs(5));
        for _ in 0..2 {
            assert_eq!(call(&client, &up.url).await, "abcdefghijklmnopqrstuvwxyz");
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_that_ends_with_its_connection_is_read_to_the_end_and_not_reused() {
        let answer = vec![
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n".to_vec(),
            b"until ".to_vec(),
            b"close".to_vec(),
        ];
        let up = scripted(answer, true).await;
        let client = UpstreamClient::new(Duration::from_secs(5));
        for _ in 0..2 {
            assert_eq!(call(&client, &up.url).await, "until close");
        }
        assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn interim_heads_are_passed_over() {
        let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
            HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok";
        let up = scripted(pieces(answer, 20), false).await;
        let client = UpstreamClient::new(Duration::from_secs(5));
        let r = post(&client, &up.url).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert!(r.headers().get("link").is_none(), "{:?}", r.headers());
        assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "ok");
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_not_a_short_answer() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nshort\r\n",
        ] {
            let up = scripted(vec![answer.to_vec()], true).await;
            let client = UpstreamClient::new(Duration::from_secs(5));
            let read = post(&client, &up.url).await.into_body().collect().await;
            let e = read.expect_err("a body cut short is an error").to_string();
            assert!(e.contains("before the body ended"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_malformed_chunk_is_a_body_error() {
        for (answer, error) in [
            (
                &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"[..],
                "malformed chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n",
                "malformed chunk end",
            ),
        ] {
            let up = scripted(vec![answer.to_vec()], true).await;
            let client = UpstreamClient::new(Duration::from_secs(5));
            let read = post(&client, &up.url).await.into_body().collect().await;
            let e = read.expect_err("a malformed chunk is an error").to_string();
            assert!(e.contains(error), "{e}");
        }
    }

    #[tokio::test]
    async fn a_malformed_or_oversized_head_is_a_send_error() {
        let huge = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(70_000));
        for (answer, error) in [
            (
                b"HTTP/1.1 2x0 OK\r\n\r\n".to_vec(),
                "malformed response head",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\n".to_vec(),
                "invalid Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok".to_vec(),
                "conflicting Content-Lengths",
            ),
            (huge.into_bytes(), "response head larger than"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-le".to_vec(),
                "connection closed before a response",
            ),
        ] {
            let up = scripted(vec![answer], true).await;
            let client = UpstreamClient::new(Duration::from_secs(5));
            let e = send_error(&client, &up.url).await;
            assert!(
                e.starts_with("upstream unreachable: ") && e.contains(error),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn which_connections_go_back_to_the_pool() {
        // (answer, connections after two calls)
        for (answer, connections) in [
            (&b"HTTP/1.1 204 No Content\r\n\r\n"[..], 1),
            (b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n", 1),
            (
                b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok",
                1,
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                2,
            ),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", 2),
            // Bytes after the body are not an answer to anything: not reused.
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA", 2),
        ] {
            let up = scripted(vec![answer.to_vec()], false).await;
            let client = UpstreamClient::new(Duration::from_secs(5));
            for _ in 0..2 {
                let r = post(&client, &up.url).await;
                r.into_body().collect().await.unwrap();
            }
            let text = String::from_utf8_lossy(answer);
            assert_eq!(up.accepted.load(Ordering::SeqCst), connections, "{text}");
        }
    }

    #[tokio::test]
    async fn every_header_of_a_long_head_arrives_and_too_many_are_an_error() {
        let head = |n: usize| {
            let mut h = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
            for i in 0..n {
                h.push_str(&format!("x-h{i}: v{i}\r\n"));
            }
            h + "\r\nok"
        };
        let up = scripted(vec![head(60).into_bytes()], false).await;
        let client = UpstreamClient::new(Duration::from_secs(5));
        let r = post(&client, &up.url).await;
        for i in 0..60 {
            assert_eq!(
                r.headers()[format!("x-h{i}").as_str()],
                format!("v{i}").as_str()
            );
        }
        assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "ok");

        let up = scripted(vec![head(MAX_HEADERS).into_bytes()], false).await;
        let e = send_error(&client, &up.url).await;
        assert!(e.contains("too many headers"), "{e}");
    }

    #[tokio::test]
    async fn framing_and_hop_by_hop_headers_of_a_response_go_no_further() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
            transfer-encoding: chunked\r\nconnection: keep-alive\r\nx-request-id: up-1\r\n\
            x-custom: a\r\nkeep-alive: timeout=5\r\nproxy-authenticate: Basic\r\n\
            proxy-authorization: Basic x\r\nte: trailers\r\ntrailer: x-sum\r\nupgrade: h2c\r\n\
            proxy-connection: keep-alive\r\nx-custom: b\r\n\r\n2\r\nok\r\n0\r\n\r\n";
        let up = scripted(vec![answer.to_vec()], false).await;
        let client = UpstreamClient::new(Duration::from_secs(5));
        let r = post(&client, &up.url).await;
        let mut names: Vec<&str> = r.headers().keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-custom", "x-request-id"]);
        let custom: Vec<_> = r.headers().get_all("x-custom").iter().collect();
        assert_eq!(custom, ["a", "b"], "repeated headers kept in order");
        assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "ok");

        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\nok";
        let up = scripted(vec![answer.to_vec()], false).await;
        let r = post(&client, &up.url).await;
        assert!(
            r.headers().get("content-length").is_none(),
            "{:?}",
            r.headers()
        );
        assert_eq!(hyper::body::Body::size_hint(r.body()).exact(), Some(2));
    }
}
