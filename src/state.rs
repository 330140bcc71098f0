//! Shared application state: `AppState(Arc<Inner>)`, cheap to clone into every handler.

use std::sync::Arc;

use chrono_tz::Tz;

use crate::clock::Clock;
use crate::config::Config;
use crate::recorder::stats::Stats;
use crate::recorder::Recorder;
use crate::store::Db;

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub db: Db,
    pub clock: Clock,
    pub tz: Tz,
    pub recorder: Recorder,
    pub stats: Arc<Stats>,
    pub redis: Option<redis::aio::ConnectionManager>,
    pub proxy: crate::proxy::ProxyState,
    pub metrics: crate::metrics::Metrics,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}
