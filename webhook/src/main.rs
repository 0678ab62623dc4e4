//! `arc-watchdog-webhook`: the injection webhook.

use clap::Parser;

use arc_watchdog_webhook::config::{Cli, LogOutput};

fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogOutput::Json => builder.json().flatten_event(true).init(),
        LogOutput::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only Ctrl-C stops the webhook");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(arc_watchdog_webhook::run(cli, shutdown_signal()));
    if let Err(err) = &result {
        tracing::error!(error = format!("{err:#}"), "arc-watchdog-webhook failed");
    }
    // Background tasks (refresher, reloader) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
