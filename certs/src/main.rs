//! `arc-watchdog-certs`: a CA and a serving certificate.
//!
//! Writes `ca.crt`, `tls.crt` and `tls.key` into `--out`. Put `tls.crt` and
//! `tls.key` into the webhook's TLS Secret and `ca.crt` (base64) into the
//! MutatingWebhookConfiguration's `caBundle`.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// Writes a CA and a serving certificate signed by it for the arc-watchdog webhook.
#[derive(Debug, Parser)]
#[command(name = "arc-watchdog-certs", version)]
struct Cli {
    /// Directory to write ca.crt, tls.crt and tls.key into (created if missing).
    #[arg(long, env = "ARC_WATCHDOG_CERTS_OUT")]
    out: PathBuf,
    /// DNS name for the serving certificate (repeatable), e.g.
    /// arc-watchdog-webhook.arc-watchdog.svc.
    #[arg(long = "dns", env = "ARC_WATCHDOG_CERTS_DNS", value_delimiter = ',')]
    dns: Vec<String>,
    /// IP address for the serving certificate (repeatable), e.g. 127.0.0.1.
    #[arg(long = "ip", env = "ARC_WATCHDOG_CERTS_IP", value_delimiter = ',')]
    ip: Vec<IpAddr>,
    /// Validity of both certificates in days.
    #[arg(long, env = "ARC_WATCHDOG_CERTS_DAYS", default_value_t = 365)]
    days: u32,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let opts = arc_watchdog_certs::Options {
        dns: cli.dns,
        ips: cli.ip,
        days: cli.days,
    };
    let bundle = arc_watchdog_certs::generate(&opts).context("generating certificates")?;
    let written = arc_watchdog_certs::write_bundle(&cli.out, &bundle)
        .with_context(|| format!("writing certificates to {}", cli.out.display()))?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}
