//! What s3drop has done, as Prometheus metrics: one registry for the process, counted where
//! things happen (an atomic add each), exposed in the Prometheus text format (0.0.4, which
//! node_exporter's textfile collector also reads) by [`serve`] on `metrics_listen` and
//! written to `metrics_textfile` by [`write_textfile`]. Gauges that describe a state (queue,
//! failed files, oldest pending file, the session) are set by the daemon once a second.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use tokio_util::sync::CancellationToken;

use crate::connections::Connections;

/// At most this many connections at once: a new one closes the oldest, so idle or slow
/// clients cannot take every descriptor or shut out a scrape.
const MAX_CONNECTIONS: usize = 64;
/// After a failed accept (no descriptor left), before the next try.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Declares a closed set of label values: the enum, every value (`ALL`), and its label.
macro_rules! labels {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
            pub fn from_label(label: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.label() == label)
            }
        }
    };
}

labels! {
    /// Why an upload attempt failed: the `kind` of `s3drop_upload_failures_total`.
    FailureKind {
        Transient => "transient",
        /// S3 asked to slow down (SlowDown, 503, 429).
        Throttled => "throttled",
        /// The session lapsed; the file waits for the next.
        NoSession => "no_session",
        Denied => "denied",
        Rejected => "rejected",
        ExpiredToken => "expired_token",
        /// `overwrite = false` met an existing object.
        Conflict => "conflict",
        Unreadable => "unreadable",
        Changed => "changed",
        /// Over `max_file_size`.
        TooLarge => "too_large",
        /// No valid object key (too long, an unsafe segment).
        InvalidKey => "invalid_key",
        /// Another file of this run already has its key (`key_template`).
        KeyClaimed => "key_claimed",
    }
}

/// Stored by its label (the ledger's failed records).
impl serde::Serialize for FailureKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.label())
    }
}

impl<'de> serde::Deserialize<'de> for FailureKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let label = String::deserialize(d)?;
        FailureKind::from_label(&label)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown failure kind {label:?}")))
    }
}

impl FailureKind {
    /// Does a file failed this way wait on an operator (STATUS, `status`, the ledger)? The
    /// other kinds pass by themselves and are retried.
    pub fn needs_operator(self) -> bool {
        use FailureKind::*;
        match self {
            Denied | Rejected | Conflict | Unreadable | TooLarge | InvalidKey | KeyClaimed => true,
            Transient | Throttled | NoSession | ExpiredToken | Changed => false,
        }
    }
}

labels! {
    /// Why a file needed nothing more: the `reason` of `s3drop_dropped_files_total`.
    DropKind {
        GoneBeforeUpload => "gone_before_upload",
        GoneDuringUpload => "gone_during_upload",
        /// A symlink, directory, socket, device or FIFO.
        NotRegular => "not_regular",
        /// A symbolic link on its path.
        Linked => "linked",
    }
}

labels! {
    /// What STS answered: the `result` of `s3drop_sts_requests_total`.
    StsResult {
        Ok => "ok",
        Throttled => "throttled",
        Refused => "refused",
        Error => "error",
    }
}

labels! {
    /// How the credential broker answered: the `result` of `s3drop_broker_requests_total`.
    BrokerResult {
        Ok => "ok",
        /// The scope asked for cannot be granted (the caller's to fix).
        Refused => "refused",
        /// STS did not mint the session.
        Failed => "failed",
    }
}

labels! {
    /// Why watch_dir was scanned whole: the `reason` of `s3drop_rescans_total`.
    RescanReason {
        Startup => "startup",
        Sighup => "sighup",
        Recreated => "recreated",
        Periodic => "periodic",
        /// inotify's queue or s3drop's channel overflowed, or the watch failed: events lost.
        Overflow => "overflow",
    }
}

/// `labels` joined for a metric's help text.
fn listed(labels: impl Iterator<Item = &'static str>) -> String {
    labels.collect::<Vec<_>>().join(", ")
}

/// Every value of `label` present from the start, at 0: an alert on `rate()` or
/// `increase()` sees the first failure of a kind (Prometheus' instrumentation guidance).
fn with_zeros(c: IntCounterVec, labels: impl Iterator<Item = &'static str>) -> IntCounterVec {
    for label in labels {
        c.with_label_values(&[label]);
    }
    c
}

pub struct Metrics {
    registry: Registry,
    pub uploaded_files: IntCounter,
    pub uploaded_bytes: IntCounter,
    pub upload_failures: IntCounterVec,
    pub dropped_files: IntCounterVec,
    pub upload_duration: Histogram,
    pub queue_files: IntGauge,
    pub failed_files: IntGauge,
    pub oldest_pending: Gauge,
    pub sts_requests: IntCounterVec,
    pub session_expiry: IntGauge,
    pub last_upload: IntGauge,
    pub rescans: IntCounterVec,
    pub broker_requests: IntCounterVec,
    pub broker_scopes: IntGauge,
    pub broker_children: IntGauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let upload_duration = Histogram::with_opts(
            HistogramOpts::new(
                "s3drop_upload_duration_seconds",
                "Time from the start of an upload to S3's confirmation.",
            )
            .buckets(prometheus::exponential_buckets(0.005, 4.0, 10).expect("buckets")),
        )
        .expect("valid metric");
        r.register(Box::new(upload_duration.clone()))
            .expect("registered once");
        let oldest_pending = Gauge::new(
            "s3drop_oldest_pending_seconds",
            "Age of the oldest file seen but not yet uploaded (0 when none).",
        )
        .expect("valid metric");
        r.register(Box::new(oldest_pending.clone()))
            .expect("registered once");
        let build = IntGauge::with_opts(
            Opts::new("s3drop_build_info", "The running s3drop's version.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("valid metric");
        build.set(1);
        r.register(Box::new(build)).expect("registered once");
        Metrics {
            uploaded_files: counter(&r, "s3drop_uploaded_files_total", "Files S3 confirmed."),
            uploaded_bytes: counter(
                &r,
                "s3drop_uploaded_bytes_total",
                "Bytes of the files S3 confirmed.",
            ),
            upload_failures: with_zeros(
                counter_vec(
                    &r,
                    "s3drop_upload_failures_total",
                    &format!(
                        "Failed upload attempts, by kind ({}).",
                        listed(FailureKind::ALL.iter().map(|k| k.label()))
                    ),
                    "kind",
                ),
                FailureKind::ALL.iter().map(|k| k.label()),
            ),
            dropped_files: with_zeros(
                counter_vec(
                    &r,
                    "s3drop_dropped_files_total",
                    &format!(
                        "Files that needed nothing more, by reason ({}).",
                        listed(DropKind::ALL.iter().map(|k| k.label()))
                    ),
                    "reason",
                ),
                DropKind::ALL.iter().map(|k| k.label()),
            ),
            upload_duration,
            queue_files: gauge(&r, "s3drop_queue_files", "Files waiting or being uploaded."),
            failed_files: gauge(
                &r,
                "s3drop_failed_files",
                "Files waiting on a failure an operator must fix.",
            ),
            oldest_pending,
            sts_requests: with_zeros(
                counter_vec(
                    &r,
                    "s3drop_sts_requests_total",
                    &format!(
                        "Sessions asked of STS, by result ({}).",
                        listed(StsResult::ALL.iter().map(|k| k.label()))
                    ),
                    "result",
                ),
                StsResult::ALL.iter().map(|k| k.label()),
            ),
            session_expiry: gauge(
                &r,
                "s3drop_session_expiry_timestamp_seconds",
                "When the current upload session expires (Unix time; 0 before the first).",
            ),
            last_upload: gauge(
                &r,
                "s3drop_last_upload_timestamp_seconds",
                "When S3 last confirmed an upload (Unix time; 0 before the first).",
            ),
            rescans: with_zeros(
                counter_vec(
                    &r,
                    "s3drop_rescans_total",
                    &format!(
                        "Full scans of watch_dir, by reason ({}).",
                        listed(RescanReason::ALL.iter().map(|k| k.label()))
                    ),
                    "reason",
                ),
                RescanReason::ALL.iter().map(|k| k.label()),
            ),
            broker_requests: with_zeros(
                counter_vec(
                    &r,
                    "s3drop_broker_requests_total",
                    &format!(
                        "Sessions asked of the credential broker, by result ({}).",
                        listed(BrokerResult::ALL.iter().map(|k| k.label()))
                    ),
                    "result",
                ),
                BrokerResult::ALL.iter().map(|k| k.label()),
            ),
            broker_scopes: gauge(
                &r,
                "s3drop_broker_scopes",
                "Narrower scopes the credential broker holds a session for.",
            ),
            broker_children: gauge(
                &r,
                "s3drop_broker_children",
                "Programs started by s3drop exec that fetch their sessions from the broker.",
            ),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// An upload S3 confirmed.
    pub fn uploaded(&self, bytes: u64, took: Duration) {
        self.uploaded_files.inc();
        self.uploaded_bytes.inc_by(bytes);
        self.upload_duration.observe(took.as_secs_f64());
        self.last_upload.set(unix(SystemTime::now()));
    }

    pub fn failed(&self, kind: FailureKind) {
        self.upload_failures
            .with_label_values(&[kind.label()])
            .inc();
    }

    pub fn dropped(&self, kind: DropKind) {
        self.dropped_files.with_label_values(&[kind.label()]).inc();
    }

    pub fn sts(&self, result: StsResult) {
        self.sts_requests.with_label_values(&[result.label()]).inc();
    }

    pub fn rescan(&self, reason: RescanReason) {
        self.rescans.with_label_values(&[reason.label()]).inc();
    }

    /// The session is usable: minted and not expired. The daemon's health.
    pub fn health(&self) -> Result<(), String> {
        let expiry = self.session_expiry.get();
        if expiry == 0 {
            return Err("no upload session yet (waiting for IMDS and STS)".into());
        }
        if expiry <= unix(SystemTime::now()) {
            return Err("the upload session expired and could not be renewed".into());
        }
        Ok(())
    }
}

/// Seconds since the Unix epoch.
pub fn unix(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Answers `GET /metrics` and `GET /health` on `addr` until `cancel`.
pub async fn serve(listener: tokio::net::TcpListener, cancel: CancellationToken) {
    let open = Connections::new(MAX_CONNECTIONS);
    let mut failing_since: Option<std::time::Instant> = None;
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors (EMFILE) or a connection reset before it was
                    // taken: say so once per burst, make room, and go on.
                    if failing_since.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                        tracing::warn!(error = %e, "the metrics listener cannot take a connection; it closes its oldest and goes on");
                        failing_since = Some(std::time::Instant::now());
                    }
                    open.close_oldest();
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
        };
        let (id, closed) = open.admit();
        let open = open.clone();
        let service = hyper::service::service_fn(answer);
        tokio::spawn(crate::connections::serve_http1(
            stream, service, open, id, closed,
        ));
    }
}

async fn answer(
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            get().render(),
        ),
        (&hyper::Method::GET, "/health") => match get().health() {
            Ok(()) => (
                StatusCode::OK,
                "application/json",
                serde_json::json!({"status": "ok"}).to_string(),
            ),
            Err(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                serde_json::json!({"status": "unavailable", "reason": reason}).to_string(),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /health\n".into(),
        ),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response"))
}

/// Binds `metrics_listen` (at start, so a taken port is a start-up error).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Writes the metrics to `path` through a temporary file renamed over it, so
/// node_exporter never reads half a file.
pub fn write_textfile(path: &Path) -> std::io::Result<()> {
    crate::file::replace_atomically(path, get().render().as_bytes(), 0o644, ".s3drop-metrics")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (metric, label) pair a closed set declares.
    fn declared() -> Vec<(&'static str, &'static str)> {
        let failures = FailureKind::ALL
            .iter()
            .map(|k| ("s3drop_upload_failures_total", k.label()));
        let sts = StsResult::ALL
            .iter()
            .map(|k| ("s3drop_sts_requests_total", k.label()));
        let rescans = RescanReason::ALL
            .iter()
            .map(|k| ("s3drop_rescans_total", k.label()));
        let broker = BrokerResult::ALL
            .iter()
            .map(|k| ("s3drop_broker_requests_total", k.label()));
        let dropped = DropKind::ALL
            .iter()
            .map(|k| ("s3drop_dropped_files_total", k.label()));
        failures
            .chain(sts)
            .chain(rescans)
            .chain(broker)
            .chain(dropped)
            .collect()
    }

    #[test]
    fn every_label_value_is_exposed_at_zero_from_the_start() {
        let text = Metrics::new().render();
        for (metric, label) in declared() {
            let name = match metric {
                "s3drop_upload_failures_total" => "kind",
                "s3drop_sts_requests_total" | "s3drop_broker_requests_total" => "result",
                _ => "reason",
            };
            let series = format!("{metric}{{{name}=\"{label}\"}} 0\n");
            assert!(text.contains(&series), "{series} missing:\n{text}");
        }
    }

    #[test]
    fn readme_names_every_label_value_in_its_metrics_row() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for (metric, label) in declared() {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{metric}")))
                .unwrap_or_else(|| panic!("README has no row for {metric}"));
            assert!(
                row.contains(&format!("`{label}`")),
                "{metric}: `{label}` not in {row}"
            );
        }
    }
}
