//! `metrics.listen`: `/metrics` on an address of its own, away from callers.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::warn;

use crate::error::{ErrorKind, ProxyError};
use crate::metrics::Registry;
use crate::service::metrics_response;

/// Serves scrapes until the process ends. Scrapes are rare and small, so
/// this runs as one task on the first worker's runtime.
pub async fn serve(listener: std::net::TcpListener, registry: Arc<Registry>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            warn!(%error, "metrics listener unusable");
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(scrape(&registry, &request)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn scrape(registry: &Registry, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let result = match request.uri().path() {
        "/metrics" => metrics_response(registry, request.method()),
        _ => Err(ProxyError::bare(ErrorKind::NotFound)),
    };
    result.unwrap_or_else(ProxyError::into_response)
}
