//! A fault-injecting HTTP proxy for loopback tests: it forwards requests to an upstream
//! (fakecloud) unchanged, Host header included so SigV4 signatures stay valid, and fails a
//! chosen share of them with 500 InternalError, 503 SlowDown, or a dropped connection. The
//! share is exact, not left to chance: of every 20 requests, `percent / 5` fail, spread
//! out by a fixed permutation. It can also be "down" (every connection dropped), e.g. to
//! play an unreachable IMDS. It can record the bodies of POST requests (STS's form-encoded
//! calls), so a test can read what a client really asked for, and shorten the sessions STS
//! hands out (fakecloud's shortest is 15 minutes), so a test can see one expire. And it can
//! answer every STS call with AWS's `Throttling` error for a while, as an account over its
//! STS request quota sees (fakecloud never throttles).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, hyper::Error>;

/// What the proxy did, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProxyStats {
    pub forwarded: u64,
    pub internal_error: u64,
    pub slow_down: u64,
    pub dropped: u64,
    /// STS calls answered with `Throttling`.
    pub sts_throttled: u64,
    /// IMDS requests answered 429.
    pub imds_throttled: u64,
    /// IMDS requests (`/latest/...`) seen, answered or not.
    pub imds_requests: u64,
    /// S3 PUT requests (objects and parts) that arrived, before any delay.
    pub s3_puts: u64,
}

impl ProxyStats {
    pub fn injected(&self) -> u64 {
        self.internal_error
            + self.slow_down
            + self.dropped
            + self.sts_throttled
            + self.imds_throttled
    }
    pub fn total(&self) -> u64 {
        self.forwarded + self.injected()
    }
}

#[derive(Default)]
struct State {
    upstream: String,
    failure_percent: AtomicU32,
    down: AtomicBool,
    seen: AtomicU64,
    /// Object PUTs are held this long before they are forwarded.
    put_delay_ms: AtomicU64,
    forwarded: AtomicU64,
    internal_error: AtomicU64,
    slow_down: AtomicU64,
    dropped: AtomicU64,
    record_posts: AtomicBool,
    posts: Mutex<Vec<String>>,
    throttle_sts: AtomicBool,
    sts_throttled: AtomicU64,
    /// The next this many IMDS requests are answered 429.
    imds_429: AtomicU64,
    imds_throttled: AtomicU64,
    imds_requests: AtomicU64,
    s3_puts: AtomicU64,
    /// Seconds: STS answers get an `<Expiration>` this far from now (0: unchanged).
    session_seconds: AtomicU64,
}

pub struct FaultProxy {
    pub endpoint: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the fault proxy")
    }
}
impl std::error::Error for Dropped {}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
    );
    answer(status, "application/xml", xml)
}

/// STS's answer to an account over its request quota (a query-protocol error).
fn sts_throttling() -> Response<Body> {
    let xml = "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
               <Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded\
               </Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>";
    answer(StatusCode::BAD_REQUEST, "text/xml", xml)
}

/// An answer made here rather than forwarded.
fn answer(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(full(body))
        .expect("static response")
}

/// A body held in memory.
fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str, failure_percent: u32) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_string(),
            failure_percent: AtomicU32::new(failure_percent),
            ..State::default()
        });
        let client: Client<HttpConnector, Body> =
            Client::builder(TokioExecutor::new()).build_http();
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if accept_state.down.load(Ordering::SeqCst) {
                    accept_state.dropped.fetch_add(1, Ordering::SeqCst);
                    drop(stream);
                    continue;
                }
                let state = accept_state.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        handle(state.clone(), client.clone(), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(FaultProxy {
            endpoint: format!("http://{addr}"),
            state,
            task,
        })
    }

    pub fn set_failure_percent(&self, percent: u32) {
        self.state.failure_percent.store(percent, Ordering::SeqCst);
    }

    /// Holds every object PUT (not IMDS's token PUT) for `delay` before forwarding it, so a
    /// test can act while an upload is in flight.
    pub fn set_put_delay(&self, delay: std::time::Duration) {
        self.state
            .put_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Keep the body of every POST from now on (see [`FaultProxy::posts`]).
    pub fn record_posts(&self) {
        self.state.record_posts.store(true, Ordering::SeqCst);
    }

    /// From now on, every session STS hands out expires `lifetime` after it passes here.
    pub fn shorten_sessions(&self, lifetime: std::time::Duration) {
        self.state
            .session_seconds
            .store(lifetime.as_secs().max(1), Ordering::SeqCst);
    }

    /// The POST bodies recorded, in order.
    pub fn posts(&self) -> Vec<String> {
        self.state.posts.lock().unwrap().clone()
    }

    /// While on, every STS call (a form POST with an `Action`) is answered 400 `Throttling`
    /// without reaching fakecloud.
    pub fn throttle_sts(&self, on: bool) {
        self.state.throttle_sts.store(on, Ordering::SeqCst);
    }

    /// Answers the next `n` IMDS requests (`/latest/...`) 429 Too Many Requests, as IMDS
    /// does when an instance asks too fast.
    pub fn throttle_imds(&self, n: u64) {
        self.state.imds_429.store(n, Ordering::SeqCst);
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn stats(&self) -> ProxyStats {
        let s = &self.state;
        ProxyStats {
            forwarded: s.forwarded.load(Ordering::SeqCst),
            internal_error: s.internal_error.load(Ordering::SeqCst),
            slow_down: s.slow_down.load(Ordering::SeqCst),
            dropped: s.dropped.load(Ordering::SeqCst),
            sts_throttled: s.sts_throttled.load(Ordering::SeqCst),
            imds_throttled: s.imds_throttled.load(Ordering::SeqCst),
            imds_requests: s.imds_requests.load(Ordering::SeqCst),
            s3_puts: s.s3_puts.load(Ordering::SeqCst),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Rewrites an STS answer's `<Expiration>` to `seconds` from now.
async fn shorten(response: hyper::Response<Incoming>, seconds: u64) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let Ok(collected) = body.collect().await else {
        return Response::from_parts(parts, full(Bytes::new()));
    };
    let text = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    let text = match (text.find("<Expiration>"), text.find("</Expiration>")) {
        (Some(start), Some(end)) if start < end => {
            let at = std::time::SystemTime::now() + std::time::Duration::from_secs(seconds);
            format!(
                "{}<Expiration>{}</Expiration>{}",
                &text[..start],
                humantime::format_rfc3339_seconds(at),
                &text[end + "</Expiration>".len()..]
            )
        }
        _ => text,
    };
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    Response::from_parts(parts, full(text))
}

async fn handle(
    state: Arc<State>,
    client: Client<HttpConnector, Body>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Dropped> {
    if state.down.load(Ordering::SeqCst) {
        state.dropped.fetch_add(1, Ordering::SeqCst);
        return Err(Dropped);
    }
    let percent = u64::from(state.failure_percent.load(Ordering::SeqCst));
    let n = state.seen.fetch_add(1, Ordering::SeqCst);
    // 7 is coprime with 20, so (7n mod 20) visits every slot once per 20 requests.
    if (n * 7) % 20 < percent / 5 {
        return match n % 3 {
            0 => {
                state.internal_error.fetch_add(1, Ordering::SeqCst);
                Ok(error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "We encountered an internal error. Please try again.",
                ))
            }
            1 => {
                state.slow_down.fetch_add(1, Ordering::SeqCst);
                Ok(error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SlowDown",
                    "Please reduce your request rate.",
                ))
            }
            _ => {
                state.dropped.fetch_add(1, Ordering::SeqCst);
                Err(Dropped)
            }
        };
    }
    let imds = req.uri().path().starts_with("/latest/");
    if imds {
        state.imds_requests.fetch_add(1, Ordering::SeqCst);
    }
    if imds
        && state
            .imds_429
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        state.imds_throttled.fetch_add(1, Ordering::SeqCst);
        return Ok(answer(
            StatusCode::TOO_MANY_REQUESTS,
            "text/plain",
            Bytes::new(),
        ));
    }
    let s3_put = req.method() == hyper::Method::PUT && !imds;
    if s3_put {
        state.s3_puts.fetch_add(1, Ordering::SeqCst);
    }
    let delay = state.put_delay_ms.load(Ordering::SeqCst);
    if delay > 0 && s3_put {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    parts.uri = format!("{}{path}", state.upstream)
        .parse()
        .map_err(|_| Dropped)?;
    let throttling = state.throttle_sts.load(Ordering::SeqCst);
    let body: Body = if (throttling || state.record_posts.load(Ordering::SeqCst))
        && parts.method == hyper::Method::POST
    {
        let bytes = body.collect().await.map_err(|_| Dropped)?.to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if throttling && text.contains("Action=") {
            state.sts_throttled.fetch_add(1, Ordering::SeqCst);
            return Ok(sts_throttling());
        }
        if state.record_posts.load(Ordering::SeqCst) {
            state.posts.lock().unwrap().push(text);
        }
        full(bytes)
    } else {
        body.boxed()
    };
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => {
            state.forwarded.fetch_add(1, Ordering::SeqCst);
            let seconds = state.session_seconds.load(Ordering::SeqCst);
            if seconds == 0 {
                return Ok(response.map(|b| b.boxed()));
            }
            Ok(shorten(response, seconds).await)
        }
        Err(_) => {
            state.dropped.fetch_add(1, Ordering::SeqCst);
            Err(Dropped)
        }
    }
}
