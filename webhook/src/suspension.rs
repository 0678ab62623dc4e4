//! Suspended injection: listeners whose pods the webhook admits without the
//! watchdog for a while, because a watchdog kept one of their pods from
//! starting (see [`crate::blocked`]).
//!
//! A suspension is two annotations on the listener's own Lease
//! `arc-watchdog.<listener>` ([`names::ANNOTATION_SUSPENDED_UNTIL`],
//! [`names::ANNOTATION_SUSPENDED_REASON`]): stored in the API, so every
//! replica and a restarted webhook see it, and gone with the listener (the
//! Lease is owned by its AutoscalingListener). Admission never reads the
//! API: it asks a [`ListenerLeases`](crate::leases::ListenerLeases) view,
//! which in the running webhook is [`LeaseView`](crate::leases::LeaseView),
//! an in-memory reflector of the managed Leases.
//!
//! A suspension counts only while it ends within `max` (the webhook's
//! `--suspend-injection-for`) from now: the listener's own ServiceAccount
//! may update its Lease, and a far-future time written there must not turn
//! its watchdog off for good.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;

use arc_watchdog_core::names;

/// Longest `reason` kept on the Lease (annotations are small by intent).
pub const MAX_REASON_LEN: usize = 512;

/// One listener's suspension, as stored on its Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspension {
    /// When injection starts again.
    pub until: Timestamp,
    /// Why it was suspended.
    pub reason: String,
}

impl Suspension {
    /// The suspension stored on `lease`, if its annotation holds a valid
    /// time (an unreadable one counts as none: the watchdog is injected).
    pub fn of(lease: &Lease) -> Option<Self> {
        let annotations = lease.metadata.annotations.as_ref()?;
        let until = annotations
            .get(names::ANNOTATION_SUSPENDED_UNTIL)?
            .trim()
            .parse::<Timestamp>()
            .ok()?;
        let reason = annotations
            .get(names::ANNOTATION_SUSPENDED_REASON)
            .cloned()
            .unwrap_or_default();
        Some(Self { until, reason })
    }

    /// Whether it holds at `now`: not ended, and ending within `max` (see
    /// the module documentation).
    pub fn is_active(&self, now: Timestamp, max: Duration) -> bool {
        let latest = now.checked_add(max).unwrap_or(Timestamp::MAX);
        now < self.until && self.until <= latest
    }

    /// `lease` with this suspension stored (its resourceVersion kept, so
    /// that the replace is conditional on what was read).
    pub fn store_on(&self, mut lease: Lease) -> Lease {
        let annotations = lease.metadata.annotations.get_or_insert_default();
        annotations.insert(
            names::ANNOTATION_SUSPENDED_UNTIL.to_owned(),
            self.until.to_string(),
        );
        annotations.insert(
            names::ANNOTATION_SUSPENDED_REASON.to_owned(),
            truncate(&self.reason, MAX_REASON_LEN),
        );
        lease
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn stored_and_read_back_keeping_other_annotations() {
        let lease = Lease {
            metadata: ObjectMeta {
                resource_version: Some("7".into()),
                annotations: Some(
                    [("arc-watchdog.dev/history".to_owned(), "{}".to_owned())].into(),
                ),
                ..ObjectMeta::default()
            },
            spec: None,
        };
        assert_eq!(Suspension::of(&lease), None);
        let s = Suspension {
            until: at("2025-01-01T01:00:00Z"),
            reason: "ImagePullBackOff".into(),
        };
        let stored = s.store_on(lease);
        assert_eq!(Suspension::of(&stored), Some(s));
        assert_eq!(stored.metadata.resource_version.as_deref(), Some("7"));
        let annotations = stored.metadata.annotations.unwrap();
        assert_eq!(annotations["arc-watchdog.dev/history"], "{}");
        assert_eq!(
            annotations[names::ANNOTATION_SUSPENDED_UNTIL],
            "2025-01-01T01:00:00Z"
        );
    }

    #[test]
    fn unreadable_time_is_no_suspension_and_long_reasons_are_cut() {
        let mut lease = Lease::default();
        lease.metadata.annotations = Some(
            [(
                names::ANNOTATION_SUSPENDED_UNTIL.to_owned(),
                "tomorrow".to_owned(),
            )]
            .into(),
        );
        assert_eq!(Suspension::of(&lease), None);
        let s = Suspension {
            until: at("2025-01-01T01:00:00Z"),
            reason: "é".repeat(MAX_REASON_LEN),
        };
        let back = Suspension::of(&s.store_on(Lease::default())).unwrap();
        assert!(back.reason.len() <= MAX_REASON_LEN);
        assert!(back.reason.chars().all(|c| c == 'é'));
    }

    #[test]
    fn active_only_before_its_end_and_within_the_bound() {
        let hour = Duration::from_secs(3600);
        let s = Suspension {
            until: at("2025-01-01T01:00:00Z"),
            reason: String::new(),
        };
        assert!(s.is_active(at("2025-01-01T00:00:00Z"), hour));
        assert!(s.is_active(at("2025-01-01T00:59:59Z"), hour));
        assert!(!s.is_active(at("2025-01-01T01:00:00Z"), hour), "ended");
        // Further away than the bound: written by someone else, ignored.
        assert!(!s.is_active(at("2024-12-31T23:59:59Z"), hour));
        assert!(!s.is_active(at("2024-12-31T00:00:00Z"), hour));
    }
}
