//! `arc-watchdog run`: the sidecar. Thin I/O around the pure parser and
//! detector: it follows the listener's log and its own pod, feeds what it
//! sees to the detector, and carries out the detector's decisions.

pub mod backoff;
pub mod events;
pub mod evict;
pub mod gate;
pub mod http;
pub mod lease;
pub mod logs;
pub mod metrics;
pub mod pod;
pub mod version;
