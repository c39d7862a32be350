//! A bound on the connections a listener keeps open: a new one closes the oldest, so idle
//! or slow local clients cannot take every descriptor or shut out the others (the metrics
//! listener, the credential broker).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

/// A request's headers must arrive this soon (slowloris), also on a kept-alive connection.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No HTTP connection lives longer (clients simply open the next).
pub const HTTP_LIFETIME: Duration = Duration::from_secs(60);

/// The open connections, oldest first, each with the token that closes it.
#[derive(Clone)]
pub struct Connections {
    max: usize,
    open: Arc<Mutex<(u64, BTreeMap<u64, CancellationToken>)>>,
}

impl Connections {
    pub fn new(max: usize) -> Connections {
        Connections {
            max,
            open: Arc::default(),
        }
    }

    /// Registers a new connection, closing the oldest if there are too many.
    pub fn admit(&self) -> (u64, CancellationToken) {
        let mut guard = self.open.lock().expect("connections lock");
        let (next, open) = &mut *guard;
        while open.len() >= self.max {
            if let Some((_, oldest)) = open.pop_first() {
                oldest.cancel();
            }
        }
        *next += 1;
        let token = CancellationToken::new();
        open.insert(*next, token.clone());
        (*next, token)
    }

    pub fn close_oldest(&self) {
        if let Some((_, oldest)) = self.open.lock().expect("connections lock").1.pop_first() {
            oldest.cancel();
        }
    }

    pub fn forget(&self, id: u64) {
        self.open.lock().expect("connections lock").1.remove(&id);
    }
}

/// Serves one HTTP/1.1 connection with `service` until it ends, `closed` (the bound closed
/// it) or [`HTTP_LIFETIME`]; headers must come within [`HEADER_TIMEOUT`]. Then forgets it.
pub async fn serve_http1<S>(
    stream: tokio::net::TcpStream,
    service: S,
    open: Connections,
    id: u64,
    closed: CancellationToken,
) where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        _ = closed.cancelled() => {}
        _ = tokio::time::sleep(HTTP_LIFETIME) => {}
    }
    open.forget(id);
}
