//! With `restartPolicy: Always` a listener's end decides a ListenerDead
//! eviction that the fresh look before sending usually finds moot (the
//! kubelet has restarted the listener in place). Nothing may claim that
//! eviction: the log line tools count as an eviction (`evicting the own
//! pod`) is written only when the request is sent, the moot outcome is
//! logged at info with why, and no ListenerEvicted Event or eviction
//! metric reports it. A listener that stays dead is still evicted, and
//! then all of them say so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod run_support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use arc_watchdog::run::evict::EVICTING_LOG;
use arc_watchdog::run::metrics::ReasonLabel;
use jiff::Timestamp;
use run_support::*;
use serde_json::Value;

/// The JSON log lines written while the guard lives (this thread: the
/// test's runtime and every task on it).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Raw lines holding `needle` anywhere (as a tool that greps the log
    /// counts them).
    fn raw_count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }

    /// Lines whose message contains `needle`.
    fn with_message(&self, needle: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(needle))
            })
            .collect()
    }
}

#[tokio::test]
async fn a_moot_eviction_is_never_logged_or_reported_as_an_eviction() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let api = StandIn::start().await.unwrap();
    api.set_lease(None);
    api.with(|s| s.log_done = true);
    api.set_pod(c1_running(Timestamp::now()));
    let (started, cancel) = start_watchdog(&api, "20s", &["--conflict-threshold=5"]).await;
    let metrics = started.shared.metrics.clone();
    let moot = || not_accepted(&metrics, "moot");
    let evicted = || {
        metrics
            .evictions
            .get_or_create(&ReasonLabel {
                reason: "listener_dead".to_owned(),
            })
            .get()
    };
    api.wait_for_run("containerd://c1").await;

    // c1 exits and is restarted in place at once: the decided eviction is
    // moot.
    api.set_pod(restarted(
        "containerd://c2",
        running(&Timestamp::now().to_string()),
        1,
        "containerd://c1",
    ));
    poll_until("a moot eviction", || moot() >= 1).await;
    assert!(api.requests("POST", "/eviction").is_empty());
    assert_eq!(evicted(), 0);
    assert_eq!(
        logs.raw_count(EVICTING_LOG),
        0,
        "a moot eviction logged as sent: {}",
        logs.text()
    );
    let decided = logs.with_message("eviction decided");
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!(decided[0]["level"], "INFO");
    let moot_lines = logs.with_message("eviction moot");
    assert_eq!(moot_lines.len(), 1, "{moot_lines:?}");
    assert_eq!(moot_lines[0]["level"], "INFO");
    assert_eq!(moot_lines[0]["fields"]["cause"], "listener_dead");
    assert!(
        moot_lines[0]["fields"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no longer dead")),
        "{moot_lines:?}"
    );
    api.with(|s| {
        for e in &s.events {
            assert_ne!(e["reason"], "ListenerEvicted", "{e}");
            let note = e["note"].as_str().unwrap_or("");
            assert!(
                !note.contains("evicting"),
                "an Event claims an eviction: {e}"
            );
        }
    });

    // c2 exits and stays down: this eviction is sent, and everything says so.
    api.set_pod(restarted(
        "containerd://c2",
        terminated(1, &Timestamp::now().to_string()),
        1,
        "containerd://c1",
    ));
    api.wait_for("the ListenerEvicted Event", |s| {
        s.events
            .iter()
            .any(|e| e["reason"] == "ListenerEvicted" && e["regarding"]["kind"] == "Pod")
    })
    .await;
    assert_eq!(api.with(|s| s.evictions.len()), 1);
    assert_eq!(evicted(), 1);
    assert_eq!(moot(), 1);
    let sent = logs.with_message(EVICTING_LOG);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["fields"]["cause"], "listener_dead");
    assert_eq!(logs.raw_count(EVICTING_LOG), 1, "{}", logs.text());

    stop(started, cancel).await;
}
