//! Logging: `tracing` to stderr, text or JSON, filtered by `log.level` (or `RUST_LOG`).
//! Colour only when stderr is a terminal: a log redirected to a file stays plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::Config;

pub fn init(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if config.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
