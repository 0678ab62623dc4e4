//! `arc-watchdog-webhook`: the injection webhook.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("arc-watchdog-webhook: not implemented yet")
}
