//! Logs: readable text on a terminal; under systemd, straight to journald through its
//! native protocol (priorities, and fields such as PATH, KEY, BYTES, ERROR, that
//! `journalctl -p warning` and `-o verbose` show); one JSON object per line otherwise (log
//! shippers, files). `RUST_LOG` overrides the default filter.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// journald when stderr is the journal (systemd's JOURNAL_STREAM), text on a terminal,
    /// JSON otherwise.
    Auto,
    Text,
    Json,
    /// journald's native protocol (falls back to JSON on stderr when journald is absent).
    Journald,
}

/// s3drop's own events at info; the SDK's only when they warn.
pub const DAEMON_FILTER: &str = "s3drop=info,warn";
/// For commands that print their own report: warnings only.
pub const QUIET_FILTER: &str = "warn";

/// Is stderr the journal? systemd sets `JOURNAL_STREAM=DEV:INODE` for a unit whose stderr
/// goes to journald; it holds only while stderr is still that very stream.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    // SAFETY: fd 2 is borrowed only for this fstat; it is not closed.
    let stderr = unsafe { std::os::fd::BorrowedFd::borrow_raw(2) };
    let Ok(file) = stderr.try_clone_to_owned().map(std::fs::File::from) else {
        return false;
    };
    file.metadata()
        .is_ok_and(|m| Some(m.dev()) == dev.parse().ok() && Some(m.ino()) == ino.parse().ok())
}

/// `default_filter` applies unless `RUST_LOG` is set.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto if std::io::stderr().is_terminal() => LogFormat::Text,
        LogFormat::Auto => LogFormat::Json,
        other => other,
    };
    if format == LogFormat::Journald {
        match tracing_journald::layer() {
            Ok(journald) => {
                let journald = journald
                    .with_field_prefix(None)
                    .with_syslog_identifier("s3drop".into());
                tracing_subscriber::registry()
                    .with(filter)
                    .with(journald)
                    .init();
                return;
            }
            Err(e) => eprintln!("s3drop: journald is not reachable ({e}); logging JSON to stderr"),
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == LogFormat::Text {
        // Every field and the message through `printable`: file names are a producer's
        // text, and must not reach the operator's terminal raw.
        let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
            let text = format!("{value:?}");
            let text = crate::message::printable(&text);
            match field.name() {
                "message" => write!(w, "{text}"),
                name => write!(w, "{name}={text}"),
            }
        });
        let fields = tracing_subscriber::field::MakeExt::delimited(fields, " ");
        builder
            .fmt_fields(fields)
            .with_ansi(std::io::stderr().is_terminal())
            .init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    }
}
