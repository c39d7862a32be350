//! The loopback endpoint `s3drop exec`'s programs fetch their sessions from: the container
//! credentials protocol every AWS SDK and aws-cli speak (`AWS_CONTAINER_CREDENTIALS_FULL_URI`
//! with `AWS_CONTAINER_AUTHORIZATION_TOKEN`), so they refresh the session themselves and
//! keep working past the one-hour limit of a role-chained session. It listens on 127.0.0.1
//! only, answers a token only while its program lives, and compares tokens in constant
//! time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::children::Children;
use super::{Broker, HandOutError};
use crate::connections::Connections;
use crate::events::{BrokerRefused, CredentialsHanded, Event};

/// The path programs are given.
pub const PATH: &str = "/credentials";
const MAX_CONNECTIONS: usize = 64;
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Binds 127.0.0.1 on a port the kernel picks (within a runtime).
pub fn bind() -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Answers on `listener` until `cancel`.
pub fn serve(
    listener: TcpListener,
    broker: Arc<OnceLock<Broker>>,
    children: Arc<Children>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) {
    let cancel = cancel.clone();
    tracker.spawn(async move {
        let open = Connections::new(MAX_CONNECTIONS);
        loop {
            let (stream, peer) = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => {
                        open.close_oldest();
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                        continue;
                    }
                },
            };
            // Bound to 127.0.0.1, yet a rule rewriting addresses could bring others here.
            if !peer.ip().is_loopback() {
                continue;
            }
            let (id, closed) = open.admit();
            let (open, broker, children) = (open.clone(), broker.clone(), children.clone());
            let service = hyper::service::service_fn(move |request| {
                let (broker, children) = (broker.clone(), children.clone());
                async move { Ok::<_, Infallible>(answer(request, &broker, &children).await) }
            });
            tokio::spawn(crate::connections::serve_http1(
                stream, service, open, id, closed,
            ));
        }
    });
}

/// The URI a program is given.
pub fn uri(addr: SocketAddr) -> String {
    format!("http://{addr}{PATH}")
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({"Code": code, "Message": message}),
    )
}

async fn answer(
    request: Request<hyper::body::Incoming>,
    broker: &OnceLock<Broker>,
    children: &Children,
) -> Response<Full<Bytes>> {
    if request.method() != hyper::Method::GET || request.uri().path() != PATH {
        return error(StatusCode::NOT_FOUND, "NotFound", "not found");
    }
    let presented = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let Some(child) = children.find(presented) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "AccessDenied",
            "no program registered with this token is running",
        );
    };
    let Some(broker) = broker.get() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the daemon has no session yet",
        );
    };
    match broker.hand_out(&child.reach).await {
        Ok(credentials) => {
            CredentialsHanded {
                uid: Some(child.uid),
                pid: Some(child.pid),
                scope: &child.scope,
                expiry: credentials.expiry(),
                via: "endpoint",
            }
            .emit();
            let mut doc = serde_json::json!({
                "AccessKeyId": credentials.access_key_id(),
                "SecretAccessKey": credentials.secret_access_key(),
                "Token": credentials.session_token().unwrap_or_default(),
            });
            if let Some(expiry) = credentials.expiry() {
                doc["Expiration"] = crate::message::rfc3339(expiry).into();
            }
            json(StatusCode::OK, doc)
        }
        Err(e) => {
            BrokerRefused {
                uid: Some(child.uid),
                pid: Some(child.pid),
                scope: Some(&child.scope),
                error: &e,
            }
            .emit();
            let status = match e {
                HandOutError::Refused(_) => StatusCode::FORBIDDEN,
                HandOutError::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(status, "CredentialsUnavailable", &e.to_string())
        }
    }
}
