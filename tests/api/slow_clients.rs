//! Slow clients (SPEC §11.5): a request head not complete within `server.header_timeout_secs`
//! drops the connection; normal keep-alive connections are unaffected. Over raw TCP against
//! the real binary.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// Read one HTTP/1.1 response with a Content-Length body; returns its status line.
async fn read_response(tcp: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text.lines().next().unwrap().to_string();
            }
        }
    }
}

#[tokio::test]
async fn an_incomplete_request_head_is_dropped_after_the_header_timeout() {
    let (url, _guard) = fresh_database(backend()).await;
    let env = [("TOLLGATE_SERVER__HEADER_TIMEOUT_SECS", "1".to_string())];
    let server = start_binary(&url, &env, Stdio::null()).await;
    let addr = server.base.trim_start_matches("http://").to_string();

    // A slowloris head: a start line and one header, then nothing.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    let took = t0.elapsed();
    assert!(read.is_ok(), "the connection was still open after 5 s");
    eprintln!(
        "slow client: incomplete head dropped after {:.2} s (timeout 1 s); answered {:?}",
        took.as_secs_f64(),
        String::from_utf8_lossy(&rest).lines().next()
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // A normal keep-alive client: two requests on one connection, both answered.
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    for _ in 0..2 {
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let status = read_response(&mut tcp).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A head sent in pieces, complete within the timeout, is fine too.
    tcp.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    tcp.write_all(b"Host: x\r\n\r\n").await.unwrap();
    assert_eq!(read_response(&mut tcp).await, "HTTP/1.1 200 OK");
}
