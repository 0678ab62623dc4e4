//! Wiring: flags → certificate store, kube client, mode, servers.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Cli;
use crate::coverage;
use crate::metrics::Metrics;
use crate::mutation::SidecarMode;
use crate::rbac::{ConfigOwner, RbacKeeper};
use crate::server::{self, AppState};
use crate::tls::{self, CertReloader};
use crate::version::{self, ModeCell, SidecarModeFlag};

/// How long start-up waits for the API server's version before starting
/// with classic sidecars (the refresher keeps asking).
const INITIAL_VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the webhook until `shutdown` completes, then shuts down gracefully.
pub async fn run(cli: Cli, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    cli.validate().map_err(anyhow::Error::msg)?;
    // kube's client and our server both use rustls; make ring the process
    // default so nothing has to guess. Already installed is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let metrics = Arc::new(Metrics::new());
    let (reloader, store) = CertReloader::load(&cli.tls_cert, &cli.tls_key, &metrics)
        .with_context(|| {
            format!(
                "loading the serving certificate {} and key {}",
                cli.tls_cert.display(),
                cli.tls_key.display()
            )
        })?;
    let tls_config = Arc::new(tls::server_config(store).context("building the TLS configuration")?);

    let needs_client =
        cli.manage_rbac || cli.report_uninjected || cli.sidecar_mode == SidecarModeFlag::Auto;
    let client = if needs_client {
        match kube::Client::try_default().await {
            Ok(client) => Some(client),
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    "no Kubernetes client (neither in-cluster config nor KUBECONFIG); \
                     serving without per-listener RBAC, without reports of uninjected listeners \
                     and with classic sidecars for --sidecar-mode=auto"
                );
                None
            }
        }
    } else {
        None
    };

    let cancel = CancellationToken::new();
    let mode = Arc::new(ModeCell::new(match cli.sidecar_mode {
        SidecarModeFlag::Native => SidecarMode::Native,
        SidecarModeFlag::Classic | SidecarModeFlag::Auto => SidecarMode::Classic,
    }));
    if cli.sidecar_mode == SidecarModeFlag::Auto
        && let Some(client) = &client
    {
        let first = tokio::time::timeout(
            INITIAL_VERSION_TIMEOUT,
            version::refresh_once(client, &mode),
        )
        .await
        .unwrap_or(version::RETRY_INTERVAL);
        let (client, mode, cancel) = (client.clone(), Arc::clone(&mode), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = async {
                    tokio::time::sleep(first).await;
                    version::refresh_loop(client, mode).await;
                } => {}
                () = cancel.cancelled() => {}
            }
        });
    }
    tracing::info!(
        requested = ?cli.sidecar_mode,
        mode = mode.get().as_str(),
        "sidecar mode"
    );

    // One lookup of the owner of what the webhook creates, for both users.
    let owner = client
        .as_ref()
        .map(|c| Arc::new(ConfigOwner::new(c.clone(), cli.webhook_config_name.clone())));
    let rbac = match (&client, &owner, cli.manage_rbac) {
        (Some(client), Some(owner), true) => {
            Some(Arc::new(RbacKeeper::new(client.clone(), Arc::clone(owner))))
        }
        (_, _, true) => {
            tracing::warn!(
                "--manage-rbac is on but there is no Kubernetes client: RBAC is not managed"
            );
            None
        }
        (_, _, false) => None,
    };

    let state = Arc::new(AppState {
        inject: cli.inject_config(),
        mode,
        metrics: Arc::clone(&metrics),
        rbac,
        rbac_budget: cli.rbac_timeout,
        max_body_bytes: cli.max_body_bytes,
        ready: std::sync::atomic::AtomicBool::new(false),
    });

    // Runs beside the servers; readiness never waits for it, and it never
    // ends the process (failures are logged, counted and retried).
    match (&client, &owner, cli.report_uninjected) {
        (Some(client), Some(owner), true) => {
            let instance = std::env::var("HOSTNAME").unwrap_or_default();
            tokio::spawn(coverage::run(
                client.clone(),
                cli.listener_namespaces.clone(),
                instance,
                Arc::clone(owner),
                Arc::clone(&metrics),
                cancel.clone(),
            ));
        }
        (_, _, true) => tracing::warn!(
            "--report-uninjected is on but there is no Kubernetes client: uninjected listeners are not reported"
        ),
        (_, _, false) => {}
    }

    let tls_listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding --listen {}", cli.listen))?;
    let admin_listener = TcpListener::bind(cli.admin_listen)
        .await
        .with_context(|| format!("binding --admin-listen {}", cli.admin_listen))?;
    tracing::info!(
        listen = %tls_listener.local_addr().unwrap_or(cli.listen),
        admin_listen = %admin_listener.local_addr().unwrap_or(cli.admin_listen),
        "serving"
    );

    {
        let (metrics, cancel, interval) = (
            Arc::clone(&metrics),
            cancel.clone(),
            cli.tls_reload_interval,
        );
        tokio::spawn(async move {
            tokio::select! {
                () = reloader.run(interval, metrics) => {}
                () = cancel.cancelled() => {}
            }
        });
    }

    let admin = {
        let cancel = cancel.clone();
        let app = server::admin_router(Arc::clone(&state));
        tokio::spawn(async move {
            axum::serve(admin_listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await
        })
    };
    let mutate = {
        let cancel = cancel.clone();
        let app = server::mutate_router(Arc::clone(&state));
        let grace = cli.shutdown_grace;
        tokio::spawn(server::serve_tls(
            tls_listener,
            tls_config,
            app,
            async move { cancel.cancelled().await },
            grace,
        ))
    };
    state.ready.store(true, Ordering::Relaxed);

    shutdown.await;
    tracing::info!("shutting down");
    state.ready.store(false, Ordering::Relaxed);
    cancel.cancel();
    let grace = cli.shutdown_grace + Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, mutate).await;
    match tokio::time::timeout(grace, admin).await {
        Ok(Ok(Ok(()))) | Err(_) => {}
        Ok(Ok(Err(err))) => tracing::warn!(error = %err, "admin server ended with an error"),
        Ok(Err(err)) => tracing::warn!(error = %err, "admin server task failed"),
    }
    tracing::info!("stopped");
    Ok(())
}
