//! The vocabulary that every arc-watchdog component shares: the names of
//! annotations, labels, containers, ports and paths ([`names`]), the
//! watchdog's thresholds and their flags ([`settings`]), the reasons of the
//! Kubernetes Events it publishes ([`reasons`]), the ways the sidecar is
//! added to a pod ([`SidecarMode`]) and the format of the binaries' own logs
//! ([`LogOutput`]).
//!
//! It holds data and its spelling only, no I/O: the webhook, the watchdog,
//! the test harness and the benchmarks depend on it so that each name has
//! one definition.

pub mod backoff;
mod log_output;
pub mod names;
pub mod reasons;
pub mod settings;
mod sidecar_mode;

pub use log_output::LogOutput;
pub use sidecar_mode::SidecarMode;
