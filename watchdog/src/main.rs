//! `arc-watchdog`: the sidecar (`run`), the offline `analyze` and `doctor`.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("arc-watchdog: not implemented yet")
}
