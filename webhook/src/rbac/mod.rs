//! Per-listener RBAC: for every AutoscalingListener, a Role and RoleBinding
//! that let its watchdog read, watch and evict **its own pod** and update
//! **its own Lease**, and the Lease itself (so the watchdog never needs
//! `create` on Leases). All three are owned by the AutoscalingListener, so
//! they go with its scale set.
//!
//! [`desired`] decides (pure functions), [`controller`] talks to the API.
//! Admission never writes anything.

pub mod controller;
pub mod desired;

pub use desired::{Listener, desired, role_rules};
