//! Runs the fake GitHub Actions service on 127.0.0.1 until interrupted,
//! for poking at ARC by hand. Prints the base URL; see
//! `arc_watchdog_tests::fake_github` for the endpoints, `GET /_fake/stats`
//! and `POST /_fake/control` (e.g. `{"action": "revoke_token"}`,
//! `{"action": "fail_endpoint", "endpoint": "message_get", "status": 503}`,
//! `{"action": "clear_faults"}`).

use std::time::Duration;

use arc_watchdog_core::settings::parse_duration;
use arc_watchdog_tests::fake_github::{FakeGithub, FakeGithubConfig};
use clap::Parser;

/// The fake GitHub Actions service.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, env = "ARC_WATCHDOG_FAKE_GITHUB_PORT", default_value = "0")]
    port: u16,
    /// How long a message poll is held before answering 202.
    #[arg(long, env = "ARC_WATCHDOG_FAKE_GITHUB_POLL_HOLD", default_value = "10s", value_parser = parse_duration)]
    poll_hold: Duration,
    /// How long a session stays active after its owner stopped polling
    /// without deleting it.
    #[arg(long, env = "ARC_WATCHDOG_FAKE_GITHUB_STALE_SESSION_TTL", default_value = "60s", value_parser = parse_duration)]
    stale_session_ttl: Duration,
    /// Lifetime of the admin JWT from runner-registration.
    #[arg(long, env = "ARC_WATCHDOG_FAKE_GITHUB_ADMIN_TOKEN_TTL", default_value = "1h", value_parser = parse_duration)]
    admin_token_ttl: Duration,
    /// Lifetime of a message-queue token: a poll after it gets 401 and the
    /// listener refreshes its session.
    #[arg(long, env = "ARC_WATCHDOG_FAKE_GITHUB_QUEUE_TOKEN_TTL", default_value = "50m", value_parser = parse_duration)]
    queue_token_ttl: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = FakeGithubConfig {
        poll_hold: args.poll_hold,
        stale_session_ttl: args.stale_session_ttl,
        admin_token_ttl: args.admin_token_ttl,
        queue_token_ttl: args.queue_token_ttl,
    };
    let fake = FakeGithub::start(config, args.port).await?;
    println!("{}", fake.url());
    tokio::signal::ctrl_c().await?;
    fake.stop().await;
    Ok(())
}
