//! arc-watchdog: the sidecar that follows an ARC scale-set listener,
//! recognises session-conflict loops and other stuck states, and heals them
//! by delaying the listener's next start and evicting its pod.
//!
//! The crate is a library first: the pure parts (names, settings, parser,
//! detector) are shared with the webhook and with the offline `analyze`
//! command, so that every consumer agrees on one definition.

pub mod analyze;
pub mod detector;
pub mod names;
pub mod parser;
pub mod run;
pub mod settings;
