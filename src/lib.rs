//! tollgate: an LLM API gateway with metered packages and an admin web UI.
//!
//! Data flows one way: `http` → `proxy` (auth, admission, forward, usage tap) → `recorder`
//! (batches, one transaction each) → `store` (the only place SQL lives). `billing` holds the
//! rules: the cost function, the window function, balances and admission.

pub mod admin;
pub mod app;
pub mod billing;
pub mod cache;
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
pub mod telemetry;
pub mod usage;
