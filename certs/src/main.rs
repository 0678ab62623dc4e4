//! `arc-watchdog-certs`: a CA and a serving certificate.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("arc-watchdog-certs: not implemented yet")
}
