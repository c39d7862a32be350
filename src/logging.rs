//! Logs on stderr: readable text on a terminal, one JSON object per line otherwise (what
//! journald and log shippers want). `RUST_LOG` overrides the default filter.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

/// s3drop's own events at info; the SDK's only when they warn.
pub const DAEMON_FILTER: &str = "s3drop=info,warn";
/// For commands that print their own report: warnings only.
pub const QUIET_FILTER: &str = "warn";

/// `default_filter` applies unless `RUST_LOG` is set.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Text => false,
        LogFormat::Json => true,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}
