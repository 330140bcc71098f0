//! tollgate: an LLM API gateway with metered packages and an admin web UI.
//!
//! Data flows one way:
//!
//! - `http` is the router, its one `edge` layer, and two thin renderings of the admin service:
//!   `http::api` (JSON) and `http::admin` (pages); `http::session` serves both.
//! - `proxy` is the request pipeline (auth → parse → admit → rewrite → ticket → forward →
//!   respond; `proxy/mod.rs` lists the steps and the layers around them). It never calls admin
//!   code and hands each usage event to the `recorder` without waiting.
//! - `admin` is the service layer: typed operations with their validation, which drop the
//!   proxy's caches themselves.
//! - `billing` holds the rules, each in one place: cost, windows, balances, admission and its
//!   estimate.
//! - `recorder` batches usage events into one settlement transaction each; it imports nothing
//!   from `proxy`.
//! - `store` is the only place SQL lives; `domain` is the typed vocabulary it decodes into.

pub mod admin;
pub mod app;
pub mod billing;
pub mod cache;
pub mod client_addr;
pub mod clock;
pub mod config;
pub mod demo;
pub mod domain;
pub mod error;
pub mod fake_upstream;
pub mod http;
pub mod i18n;
pub mod metrics;
pub mod proxy;
pub mod recorder;
pub mod secrets;
pub mod state;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod usage;
