//! `GET /metrics` (and HEAD) over HTTP/1.1, served by hyper: at most
//! [`MAX_CONNECTIONS`] at once (more are closed as they come), a request head within
//! [`READ_TIMEOUT`] (hyper's header timeout; a slow client is disconnected), one
//! request per connection, and the whole exchange within [`CONNECTION_TIMEOUT`].

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, StatusCode,
    body::Incoming,
    header::{ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc, oneshot},
    task::{JoinHandle, JoinSet},
    time::timeout,
};

use crate::control::{ControlError, api::Stats};

/// How the endpoint asks the gateway's loop for its figures: a reply channel, answered
/// with the core's [`Stats`] (`gateway/run.rs`).
pub type StatsAsk = mpsc::Sender<oneshot::Sender<Stats>>;

/// A client must send its request head within this.
pub(super) const READ_TIMEOUT: Duration = if cfg!(test) {
    Duration::from_millis(300)
} else {
    Duration::from_secs(5)
};
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 64;

/// Binds `addr` and serves `GET /metrics` from the gateway's answers to `stats`.
/// Abort the handle to stop (that closes every connection too).
pub async fn serve(addr: SocketAddr, stats: StatsAsk) -> Result<JoinHandle<()>, ControlError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|cause| ControlError::Bind { addr, cause })?;
    Ok(spawn(listener, stats))
}

/// [`serve`] on a listener the caller bound (e.g. to learn a port chosen by the OS).
pub fn spawn(listener: TcpListener, stats: StatsAsk) -> JoinHandle<()> {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut connections = JoinSet::new();
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            while connections.try_join_next().is_some() {}
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let stats = stats.clone();
            connections.spawn(async move {
                let _permit = permit;
                let service = service_fn(move |req| answer(req, stats.clone()));
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(READ_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = timeout(CONNECTION_TIMEOUT, conn).await;
            });
        }
    })
}

type Reply = hyper::Response<Full<Bytes>>;

fn text(code: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut r = hyper::Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("a valid header"),
    );
    r
}

async fn answer(req: hyper::Request<Incoming>, stats: StatsAsk) -> Result<Reply, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(text(StatusCode::NOT_FOUND, "not found; try /metrics\n"));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(ALLOW, "GET, HEAD".parse().expect("a valid header"));
        return Ok(r);
    }
    let (tx, rx) = oneshot::channel();
    let figures = match stats.send(tx).await {
        Ok(()) => rx.await.ok(),
        Err(_) => None,
    };
    let Some(figures) = figures else {
        return Ok(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is shutting down\n",
        ));
    };
    let mut r = text(StatusCode::OK, super::render(&figures));
    r.headers_mut().insert(
        CONTENT_TYPE,
        super::CONTENT_TYPE.parse().expect("a valid header"),
    );
    Ok(r)
}
