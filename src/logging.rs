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

/// The text format: time, level, and s3drop's message, which is a complete sentence (the
/// fields are for JSON and journald); other crates' events (the SDK's, at debug) with
/// their fields. Everything through [`crate::message::printable`]: file names are a
/// producer's text, and must not reach the operator's terminal raw.
struct Sentences;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Sentences
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::time::FormatTime;
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut w)?;
        let meta = event.metadata();
        write!(w, " {:>5} ", meta.level())?;
        let ours = meta.target().starts_with("s3drop");
        if !ours {
            write!(w, "{}: ", meta.target())?;
        }
        let mut fields = Fields {
            ours,
            message: String::new(),
            rest: String::new(),
        };
        event.record(&mut fields);
        let line = format!("{}{}", fields.message, fields.rest);
        if ours {
            // s3drop's messages show names through `printable` already.
            writeln!(w, "{}", crate::message::controls_escaped(&line))
        } else {
            writeln!(w, "{}", crate::message::printable(&line))
        }
    }
}

/// The message, and (for other crates' events) the fields as `name=value`.
struct Fields {
    ours: bool,
    message: String,
    rest: String,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else if !self.ours {
            self.rest.push_str(&format!(" {}={value}", field.name()));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else if !self.ours {
            self.rest.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
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
        builder.event_format(Sentences).init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    }
}
