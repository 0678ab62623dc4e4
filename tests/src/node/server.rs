//! The fake kubelet's HTTPS endpoint on 127.0.0.1, where the API server
//! proxies `pods/log`: TLS (HTTP/2 and HTTP/1.1), one task per connection,
//! and routing to the containerLogs handler in `logs.rs`.

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::logs::{Logs, serve_logs};

/// A response body, whole or streamed (a followed log).
pub(super) type Body = BoxBody<Bytes, Infallible>;

/// A plain-text response.
pub(super) fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())).boxed());
    *r.status_mut() = status;
    r
}

/// Starts the kubelet server for the Node `name` on a free port of
/// 127.0.0.1, serving `logs`, with a self-signed certificate for that name
/// (the API server does not verify kubelets without
/// `--kubelet-certificate-authority`). Returns the port and the server's
/// task.
pub(super) async fn serve(name: &str, logs: Logs) -> Result<(u16, JoinHandle<()>)> {
    let bundle = arc_watchdog_certs::generate(&arc_watchdog_certs::Options {
        dns: vec![name.to_owned()],
        ips: vec![std::net::IpAddr::V4(Ipv4Addr::LOCALHOST)],
        days: 7,
    })?;
    let certs = rustls_pemfile::certs(&mut bundle.serving.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut bundle.serving.key_pem.as_bytes())?
        .ok_or_else(|| anyhow!("no private key in generated PEM"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(accept_loop(listener, acceptor, logs));
    Ok((port, server))
}

async fn accept_loop(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, logs: Logs) {
    loop {
        let Ok((tcp, _peer)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let logs = logs.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let logs = logs.clone();
                async move { Ok::<_, Infallible>(route(&logs, &req)) }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
        });
    }
}

fn route<B>(logs: &Logs, req: &Request<B>) -> Response<Body> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    if req.method() == hyper::Method::GET && path.starts_with("/containerLogs/") {
        serve_logs(logs, path, query)
    } else if path == "/healthz" {
        text(StatusCode::OK, "ok")
    } else {
        text(
            StatusCode::NOT_FOUND,
            "the fake kubelet of arc-watchdog's tests serves only /containerLogs\n",
        )
    }
}
