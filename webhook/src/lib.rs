//! arc-watchdog-webhook: the mutating admission webhook that injects the
//! arc-watchdog sidecar into ARC scale-set listener pods.
//!
//! The pure parts ([`mutation`], [`review`], [`version::Cluster::auto_mode`],
//! [`rbac::desired`], [`coverage::classify`], [`blocked::classify`], [`missing::classify`],
//! [`suspension::Suspension`], [`leases::slim_lease`], [`self_tls::plan`]) are plain functions
//! over data; [`server`], [`tls`], [`rbac::controller`], [`coverage::run`], [`blocked::run`],
//! [`missing::run`], [`leases::LeaseView`] and [`self_tls::run`] are the thin I/O around them;
//! [`run`] wires
//! everything together for the
//! binary. Admission ([`review::handle`]) has no side effects: the
//! per-listener objects come from ARC's AutoscalingListeners.

pub mod blocked;
pub mod config;
pub mod coverage;
pub mod events;
pub mod evict;
pub mod leases;
pub mod metrics;
pub mod missing;
pub mod mutation;
pub mod owner;
pub mod rbac;
pub mod review;
pub mod self_tls;
pub mod server;
pub mod suspension;
pub mod tls;
pub mod version;

mod app;

pub use app::run;
