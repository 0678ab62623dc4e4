//! arc-watchdog: the sidecar that follows an ARC scale-set listener,
//! recognises session-conflict loops and other stuck states, and heals them
//! by delaying the listener's next start and evicting its pod.
//!
//! The crate is a library first: the pure parts (parser, detector) serve
//! the sidecar (`run`), the offline `analyze` command, the `status` command, the tests and the
//! benchmarks alike. The vocabulary it shares with the webhook (names,
//! thresholds, Event reasons) lives in `arc-watchdog-core`, re-exported here
//! as [`names`] and [`settings`].

pub mod analyze;
pub mod detector;
pub mod parser;
pub mod run;
#[cfg(feature = "stand-in")]
pub mod stand_in;
pub mod status;

pub use arc_watchdog_core::{names, settings};
