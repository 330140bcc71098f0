//! Building and running the gateway: connect, migrate, make the first admin, start the
//! recorder, bind (port 0 allowed), serve until a shutdown signal, then drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::billing::admission::{Reservations, SETTLED_KEEP};
use crate::billing::shared::SharedReservations;
use crate::clock::Clock;
use crate::config::Config;
use crate::proxy::account_errors::AccountErrors;
use crate::proxy::concurrency::Concurrency;
use crate::proxy::limits::Limiter;
use crate::proxy::ProxyState;
use crate::recorder::stats::Stats;
use crate::recorder::{Recorder, RecorderMetrics, RecorderOptions, RecorderWorker};
use crate::secrets::{hash_password, random_base62};
use crate::state::{AppState, Inner};
use crate::store::Db;

/// A built gateway, not yet serving.
pub struct App {
    pub state: AppState,
    worker: RecorderWorker,
    /// The first admin's generated password, when this start created it.
    pub created_admin: Option<(String, String)>,
}

/// Connect to the database and apply migrations.
pub async fn connect(config: &Config) -> anyhow::Result<Db> {
    let db = Db::connect_with_timeout(
        config.database.url.expose(),
        config.database.max_connections,
        Duration::from_millis(config.database.timeout_ms),
    )
    .await?
    .with_statement_timeout(Duration::from_millis(config.database.statement_timeout_ms));
    db.migrate().await?;
    open_secrets(db, config).await
}

/// Attach `secrets.key` to the store (SPEC §11.7). With a key: every sealed account secret
/// must open with it (else startup stops naming `secrets.key`), and plaintext rows are sealed
/// now. Without one: sealed rows stop startup; otherwise one warning.
pub async fn open_secrets(db: Db, config: &Config) -> anyhow::Result<Db> {
    let sealer = crate::secrets::at_rest::Sealer::from_config(&config.secrets.key)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let keyed = sealer.has_key();
    let db = db.with_secrets(sealer.clone());
    db.check_secrets().await.map_err(|e| {
        anyhow::anyhow!("`secrets.key`: cannot read the stored account secrets: {e}")
    })?;
    if keyed {
        let done = db.reseal_secrets(&sealer, true).await?;
        if done.rewritten > 0 {
            tracing::info!(
                accounts = done.rewritten,
                "encrypted the plaintext account secrets with `secrets.key`"
            );
        }
    } else {
        tracing::warn!(
            "`secrets.key` is not set: upstream account secrets are stored in plaintext \
             (see `tollgate secrets generate-key`)"
        );
    }
    Ok(db)
}

/// How long a reservation in Redis lives without its instance: the longest an upstream may
/// keep a request waiting (first byte, then a silence between chunks), plus a minute. A
/// stream that lasts longer loses its hold then (it still counts in this process).
fn hold_ttl(upstream: &crate::config::UpstreamConfig) -> Duration {
    Duration::from_secs(upstream.first_byte_timeout_secs + upstream.idle_timeout_secs + 60)
}

/// How long a concurrency lease lives in Redis unless refreshed (a third of it): longer than
/// any upstream timeout, so a live request never loses its slot to a slow refresh.
fn lease_ttl(upstream: &crate::config::UpstreamConfig) -> Duration {
    let longest = upstream
        .first_byte_timeout_secs
        .max(upstream.idle_timeout_secs)
        .max(upstream.connect_timeout_secs);
    Duration::from_secs(longest + 30)
}

async fn connect_redis(config: &Config) -> anyhow::Result<Option<redis::aio::ConnectionManager>> {
    let url = config.redis.url.expose();
    if url.is_empty() {
        return Ok(None);
    }
    let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("`redis.url`: {e}"))?;
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(1)))
        .set_number_of_retries(2);
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        redis::aio::ConnectionManager::new_with_config(client, cfg),
    )
    .await
    .map_err(|_| anyhow::anyhow!("`redis.url`: Redis did not answer within 5 s"))?
    .map_err(|e| anyhow::anyhow!("`redis.url`: cannot connect to Redis: {e}"))?;
    Ok(Some(conn))
}

/// On an empty database, create the first admin: password from config, else a random one that
/// is returned (to be printed once).
pub async fn ensure_first_admin(
    db: &Db,
    config: &Config,
    now_ms: i64,
) -> anyhow::Result<Option<(String, String)>> {
    if db.count_admins().await? > 0 {
        return Ok(None);
    }
    let username = config.admin.initial_username.clone();
    let configured = config.admin.initial_password.expose().to_string();
    let (password, generated) = if configured.is_empty() {
        (random_base62(20), true)
    } else {
        (configured, false)
    };
    db.create_user(
        &username,
        crate::domain::Role::Admin,
        Some(&hash_password(&password)),
        now_ms,
    )
    .await?;
    tracing::info!(username = %username, "created the first admin account");
    Ok(generated.then_some((username, password)))
}

impl App {
    pub async fn build(config: Config, clock: Clock) -> anyhow::Result<App> {
        crate::recorder::check_writable(&config.journal_path()).map_err(|e| {
            anyhow::anyhow!(
                "`recorder.journal_path`: cannot write the journal in {}: {e}",
                config.journal_path().display()
            )
        })?;
        let db = connect(&config).await?;
        let created_admin = ensure_first_admin(&db, &config, clock.now_ms()).await?;
        let redis = connect_redis(&config).await?;
        let prefix = config.redis.key_prefix.clone();
        let (stats, limiter) = match &redis {
            Some(c) => (
                Stats::Redis {
                    conn: c.clone(),
                    prefix: prefix.clone(),
                },
                Limiter::redis(
                    c.clone(),
                    prefix,
                    Duration::from_millis(config.redis.timeout_ms),
                ),
            ),
            None => (Stats::memory(), Limiter::memory()),
        };
        let stats = Arc::new(stats);
        let reservations = Arc::new(match &redis {
            Some(c) => Reservations::with_redis(SharedReservations::new(
                c.clone(),
                config.redis.key_prefix.clone(),
                Duration::from_millis(config.redis.timeout_ms),
                hold_ttl(&config.upstream),
                SETTLED_KEEP,
            )),
            None => Reservations::default(),
        });
        let concurrency = match &redis {
            Some(c) => Concurrency::redis(
                c.clone(),
                config.redis.key_prefix.clone(),
                Duration::from_millis(config.redis.timeout_ms),
                lease_ttl(&config.upstream),
            ),
            None => Concurrency::memory(),
        };
        let grants = Arc::new(crate::cache::TtlCache::new(crate::cache::TTL));
        let key_budgets = Arc::new(crate::billing::key_budget::KeyBudgets::default());
        let (recorder, worker) = Recorder::start(
            db.clone(),
            stats.clone(),
            clock.clone(),
            RecorderOptions {
                queue_capacity: config.recorder.queue_capacity,
                batch_size: config.recorder.batch_size,
                flush_interval: Duration::from_millis(config.recorder.flush_interval_ms),
                journal_dir: config.journal_path(),
                journal_max_bytes: config.recorder.journal_max_bytes,
                tz: config.timezone(),
                reservations: reservations.clone(),
                grants: grants.clone(),
                key_budgets: key_budgets.clone(),
            },
            Arc::new(RecorderMetrics::default()),
        );
        // A journal left by an earlier run (crash, or the database down at shutdown).
        if let Err(e) = recorder.replay_journal().await {
            tracing::warn!(error = %e, "could not apply the recorder journal yet; it will be retried");
        }
        let account_errors = AccountErrors::start(db.clone());
        let mut proxy = ProxyState::new(
            &config.upstream,
            limiter,
            concurrency,
            reservations,
            grants,
            account_errors,
            clock.clone(),
        )?
        .with_key_budgets(key_budgets);
        // Instant propagation of admin writes (SPEC §11.2): its own connection subscribes.
        let bus_client = match &redis {
            Some(c) => {
                proxy.set_bus(crate::cache::bus::Bus::new(
                    c.clone(),
                    &config.redis.key_prefix,
                ));
                Some(redis::Client::open(config.redis.url.expose())?)
            }
            None => None,
        };
        let tz = config.timezone();
        let state = AppState(Arc::new(Inner {
            config,
            db,
            clock,
            tz,
            recorder,
            stats,
            redis,
            proxy,
            metrics: crate::metrics::Metrics::default(),
        }));
        if let Some(client) = bus_client {
            ProxyState::listen(&state, client);
        }
        Ok(App {
            state,
            worker,
            created_admin,
        })
    }

    /// Serve on `listener` until `shutdown` resolves; then stop accepting, let in-flight
    /// requests finish (up to `server.shutdown_grace_secs`), close what is still open (its
    /// streams are recorded `partial`), drain the recorder, close the pool: the process is
    /// done within grace + 10 s whatever the database does.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        use futures_util::FutureExt;
        use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

        let App { state, worker, .. } = self;
        crate::proxy::probe::start(&state);
        let grace = Duration::from_secs(state.config.server.shutdown_grace_secs);
        let frontend = Arc::new(crate::http::Frontend::new(state.clone()));
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // A request head still incomplete after `server.header_timeout_secs` drops the
        // connection (a slow client cannot hold it open); hyper needs a timer for that.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(state.config.server.header_timeout_secs));
        // Each connection is told to finish gracefully when this changes (or is dropped).
        let (close_tx, close_rx) = tokio::sync::watch::channel(());
        let mut conns = tokio::task::JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: pause rather than spin.
                            tracing::warn!(error = %e, "cannot accept a connection");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // Streams are written event by event: without TCP_NODELAY, Nagle's
                    // algorithm meets the client's delayed ACK and holds small writes ~40 ms.
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    // The peer address, from which `http::edge` works out the client address.
                    let frontend = frontend.clone();
                    let service = hyper::service::service_fn(
                        move |mut req: axum::http::Request<hyper::body::Incoming>| {
                            req.extensions_mut()
                                .insert(axum::extract::ConnectInfo(peer));
                            frontend
                                .call(req.map(axum::body::Body::new))
                                .map(Ok::<_, std::convert::Infallible>)
                        },
                    );
                    let builder = builder.clone();
                    let mut close = close_rx.clone();
                    conns.spawn(async move {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                        let mut conn = std::pin::pin!(conn);
                        tokio::select! {
                            r = conn.as_mut() => {
                                if let Err(e) = r {
                                    tracing::trace!(error = %e, "connection ended with an error");
                                }
                                return;
                            }
                            _ = close.changed() => conn.as_mut().graceful_shutdown(),
                        }
                        let _ = conn.await;
                    });
                }
            }
        }
        drop(listener);
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = close_tx.send(());
        let drained =
            tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                open = conns.len(),
                "in-flight requests did not finish within the grace period; closing them"
            );
            // Dropping a connection drops its streams, which record what they saw (`partial`).
            state
                .proxy
                .closing
                .store(true, std::sync::atomic::Ordering::Relaxed);
            conns.abort_all();
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while conns.join_next().await.is_some() {}
            })
            .await;
        }
        tracing::info!("draining the recorder");
        if tokio::time::timeout(Duration::from_secs(8), worker.shutdown())
            .await
            .is_err()
        {
            tracing::error!(
                "the recorder did not finish draining within 8 s; exiting anyway \
                 (what is in the journal is applied at the next start)"
            );
        }
        if tokio::time::timeout(Duration::from_secs(1), state.db.close())
            .await
            .is_err()
        {
            tracing::warn!("the database pool did not close within 1 s");
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Bind the configured address (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("`server.listen`: cannot bind {addr}: {e}"))
}

/// Where the gateway can be reached from this machine: `server.public_url` when set, else the
/// bound address (a wildcard bind shown as loopback, which is where a newcomer's browser is).
pub fn base_url(config: &Config, local: SocketAddr) -> String {
    let public = config.server.public_url.trim_end_matches('/');
    if !public.is_empty() {
        return public.to_string();
    }
    let ip = match local.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, local.port()))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
