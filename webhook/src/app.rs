//! Wiring: flags → certificate store, kube client, mode, servers.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::blocked;
use crate::config::{Cli, TlsMode};
use crate::coverage;
use crate::leases::{LeaseView, ListenerLeases, NoLeases};
use crate::metrics::Metrics;
use crate::missing;
use crate::mutation::SidecarMode;
use crate::owner::ConfigOwner;
use crate::rbac;
use crate::self_tls;
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

    let mut shutdown = std::pin::pin!(shutdown);
    let metrics = Arc::new(Metrics::new());
    // With files the pair must load before anything starts; a self-managed
    // pair comes from the Secret once the kube client is there.
    let reloader = match cli.tls_mode {
        TlsMode::Files => Some(
            CertReloader::load(&cli.tls_cert, &cli.tls_key, &metrics).with_context(|| {
                format!(
                    "loading the serving certificate {} and key {}",
                    cli.tls_cert.display(),
                    cli.tls_key.display()
                )
            })?,
        ),
        TlsMode::SelfManaged => None,
    };
    let tls_namespace = match cli.tls_mode {
        TlsMode::SelfManaged => Some(cli.tls_namespace().map_err(anyhow::Error::msg)?),
        TlsMode::Files => None,
    };

    let needs_client = cli.manage_rbac
        || cli.report_uninjected
        || cli.release_blocked_listeners
        || !cli.report_missing_after.is_zero()
        || cli.sidecar_mode == SidecarModeFlag::Auto
        || cli.tls_mode == TlsMode::SelfManaged;
    let client = if needs_client {
        match kube::Client::try_default().await {
            Ok(client) => Some(client),
            Err(err) if cli.tls_mode == TlsMode::SelfManaged => {
                return Err(anyhow::Error::new(err).context(
                    "--tls-mode=self-managed needs a Kubernetes client (in-cluster config or KUBECONFIG)",
                ));
            }
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
        let (listed_tx, listed) = tokio::sync::oneshot::channel();
        {
            let (client, mode, cancel) = (client.clone(), Arc::clone(&mode), cancel.clone());
            tokio::spawn(async move {
                tokio::select! {
                    () = version::watch_kubelets(client, mode, listed_tx) => {}
                    () = cancel.cancelled() => {}
                }
            });
        }
        let first = tokio::time::timeout(
            INITIAL_VERSION_TIMEOUT,
            version::refresh_once(client, &mode),
        )
        .await
        .unwrap_or(version::RETRY_INTERVAL);
        // The first admissions get the mode of the whole cluster, not the
        // classic of an empty node list, unless listing takes too long.
        let _ = tokio::time::timeout(INITIAL_VERSION_TIMEOUT, listed).await;
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

    let owner = client
        .as_ref()
        .map(|c| Arc::new(ConfigOwner::new(c.clone(), cli.webhook_config_name.clone())));
    // Runs beside the servers, like the coverage report below; readiness
    // never waits for it.
    match (&client, cli.manage_rbac) {
        (Some(client), true) => {
            tokio::spawn(rbac::controller::run(
                client.clone(),
                cli.listener_namespaces.clone(),
                Arc::clone(&metrics),
                cancel.clone(),
            ));
        }
        (None, true) => tracing::warn!(
            "--manage-rbac is on but there is no Kubernetes client: per-listener RBAC is not managed \
             and every watchdog fails open"
        ),
        (_, false) => {}
    }

    // What admission reads of the listeners' Leases (pending backoffs, and
    // the suspensions it honours when blocked listeners are released), and
    // that release; beside the servers, never holding readiness.
    let release = cli.release_blocked_listeners;
    let leases: Arc<dyn ListenerLeases> = match &client {
        Some(client) => {
            let view = LeaseView::start(
                client,
                &cli.listener_namespaces,
                release.then_some(cli.suspend_injection_for),
                &cancel,
            );
            // `owner` is there whenever the client is.
            if let (Some(owner), true) = (&owner, release) {
                tokio::spawn(blocked::run(
                    client.clone(),
                    cli.listener_namespaces.clone(),
                    Arc::clone(&view),
                    Arc::clone(owner),
                    Arc::clone(&metrics),
                    blocked::Settings {
                        blocked_after: cli.blocked_after,
                        suspend_for: cli.suspend_injection_for,
                        instance: std::env::var("HOSTNAME").unwrap_or_default(),
                    },
                    cancel.clone(),
                ));
            }
            view
        }
        None => {
            if release {
                tracing::warn!(
                    "--release-blocked-listeners is on but there is no Kubernetes client: a \
                     watchdog that cannot start keeps its listener from starting"
                );
            }
            Arc::new(NoLeases)
        }
    };

    let state = Arc::new(AppState {
        inject: cli.inject_config(),
        mode,
        metrics: Arc::clone(&metrics),
        max_body_bytes: cli.max_body_bytes,
        body_budget: server::BodyBudget::new(cli.max_buffered_bytes),
        request_timeout: cli.request_timeout,
        ready: std::sync::atomic::AtomicBool::new(false),
        leases,
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

    // Beside the servers too; never holds readiness nor ends the process.
    match (&client, &owner, cli.report_missing_after.is_zero()) {
        (Some(client), Some(owner), false) => {
            tokio::spawn(missing::run(
                client.clone(),
                Arc::clone(owner),
                Arc::clone(&metrics),
                missing::Settings {
                    report_after: cli.report_missing_after,
                    runner_namespaces: cli.runner_namespaces.clone(),
                    listener_namespaces: cli.listener_namespaces.clone(),
                    delete_stuck_after: Some(cli.delete_stuck_terminating_after)
                        .filter(|d| !d.is_zero()),
                    dry_run: cli.missing_actions_dry_run,
                    budget: cli.delete_stuck_terminating_budget,
                    instance: std::env::var("HOSTNAME").unwrap_or_default(),
                },
                cancel.clone(),
            ));
        }
        (_, _, false) => tracing::warn!(
            "--report-missing-after is set but there is no Kubernetes client: missing listeners are not reported"
        ),
        (_, _, true) => {}
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

    // The admin server answers from here on (/healthz for the liveness
    // probe); /readyz only once /mutate serves a certificate.
    let admin = {
        let cancel = cancel.clone();
        let app = server::admin_router(Arc::clone(&state));
        tokio::spawn(async move {
            axum::serve(admin_listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await
        })
    };

    let store = match (reloader, &client, &owner, tls_namespace) {
        (Some((reloader, store)), _, _, _) => {
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
            store
        }
        (None, Some(client), Some(owner), Some(namespace)) => {
            let mut manager = self_tls::run::Manager::new(
                client.clone(),
                Arc::clone(owner),
                Arc::clone(&metrics),
                self_tls::run::Settings {
                    policy: cli.tls_policy(&namespace),
                    namespace,
                    secret_name: cli.tls_secret_name.clone(),
                    config_name: cli.webhook_config_name.clone(),
                    interval: cli.tls_reload_interval,
                },
            );
            tracing::info!(
                ?manager,
                "self-managed TLS: waiting for a serving certificate"
            );
            let store = tokio::select! {
                store = manager.first_pair() => store,
                () = &mut shutdown => {
                    tracing::info!("shutting down before a serving certificate was loaded");
                    cancel.cancel();
                    let _ = tokio::time::timeout(cli.shutdown_grace, admin).await;
                    return Ok(());
                }
            };
            tokio::spawn(manager.run(cancel.clone()));
            store
        }
        _ => anyhow::bail!("self-managed TLS without a Kubernetes client"),
    };
    let tls_config = Arc::new(tls::server_config(store).context("building the TLS configuration")?);
    let mutate = {
        let cancel = cancel.clone();
        let app = server::mutate_router(Arc::clone(&state));
        tokio::spawn(server::serve_tls(
            tls_listener,
            tls_config,
            app,
            cli.server_limits(),
            Arc::clone(&metrics),
            async move { cancel.cancelled().await },
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
