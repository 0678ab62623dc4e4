//! arc-watchdog-webhook: the mutating admission webhook that injects the
//! arc-watchdog sidecar into ARC scale-set listener pods.
//!
//! The pure parts ([`mutation`], [`review`], [`version::mode_for_version`],
//! [`rbac::role_rules`], [`coverage::classify`]) are plain functions over
//! data; [`server`], [`tls`], [`rbac::RbacKeeper`] and [`coverage::run`] are
//! the thin I/O around them; [`run`] wires
//! everything together for the binary.

pub mod config;
pub mod coverage;
pub mod metrics;
pub mod mutation;
pub mod rbac;
pub mod review;
pub mod server;
pub mod tls;
pub mod version;

mod app;

pub use app::run;
