//! A TCP fault proxy between the gateway and MySQL or Redis: `pass` forwards, `cut` closes
//! every connection and each new one at once, `hang` accepts and holds connections but
//! forwards nothing (a hung server). Leaving `hang` closes the held connections. The shared
//! servers behind it are never touched.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Cut,
    Hang,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.mode.send_replace(Mode::Cut);
    }
}

impl FaultProxy {
    /// Listen on 127.0.0.1:0 and forward to `target` (host:port).
    pub async fn start(target: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, _) = watch::channel(Mode::Pass);
        let mode = Arc::new(tx);
        let target = target.to_string();
        let m = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let rx = m.subscribe();
                let target = target.clone();
                tokio::spawn(async move { serve(client, &target, rx).await });
            }
        });
        FaultProxy { addr, mode, task }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// `url` with its host:port replaced by the proxy's.
    pub fn url(&self, url: &str, target: &str) -> String {
        url.replacen(target, &self.addr.to_string(), 1)
    }
}

/// A Redis connection to `url` through a new fault proxy, giving up on a connect or a reply
/// after 200 ms (so a hung proxy fails calls instead of holding them).
pub async fn redis_through_proxy(url: &str) -> (FaultProxy, redis::aio::ConnectionManager) {
    let target = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let proxy = FaultProxy::start(&target).await;
    let client = redis::Client::open(proxy.url(url, &target)).unwrap();
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_millis(200)))
        .set_response_timeout(Some(std::time::Duration::from_millis(200)));
    let conn = redis::aio::ConnectionManager::new_with_config(client, cfg)
        .await
        .unwrap();
    (proxy, conn)
}

async fn serve(mut client: TcpStream, target: &str, mut rx: watch::Receiver<Mode>) {
    let mode = *rx.borrow_and_update();
    match mode {
        Mode::Cut => {}
        Mode::Hang => hold(client, rx).await,
        Mode::Pass => {
            let Ok(mut server) = TcpStream::connect(target).await else {
                return;
            };
            let next = tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => None,
                m = rx.wait_for(|m| *m != Mode::Pass) => m.ok().map(|m| *m),
            };
            if next == Some(Mode::Hang) {
                drop(server);
                hold(client, rx).await;
            }
        }
    }
}

/// Keep the connection open, reading nothing, until the proxy leaves `hang`.
async fn hold(client: TcpStream, mut rx: watch::Receiver<Mode>) {
    let _ = rx.wait_for(|m| *m != Mode::Hang).await;
    drop(client);
}
