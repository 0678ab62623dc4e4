//! Following the listener container's log through the API server
//! (`pods/log?follow=true&timestamps=true`).
//!
//! The shared parser splits and classifies the byte stream (it reads the
//! timestamp the API server prepends); [`ResumeFilter`] drops what a
//! resumed stream sends again: after a drop the follower reconnects with `sinceTime` set to the
//! last timestamp seen (rounded down to the second, the API's precision),
//! so lines at or before that timestamp come again and are skipped.

use std::time::Duration;

use futures::AsyncBufReadExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::pod::{ListenerState, PodView};
use crate::parser::{EntryKey, ListenerEvent, Parser};

/// Remembers the last timestamp seen and the lines seen at that exact
/// timestamp, so that a resumed stream never hands on a line twice.
#[derive(Debug, Default, Clone)]
pub struct ResumeFilter {
    last: Option<Timestamp>,
    at_last: Vec<u64>,
}

impl ResumeFilter {
    /// Whether the line with dedupe `key` is new; records it if so. Lines
    /// without a timestamp cannot be recognised and always pass.
    pub fn accept(&mut self, key: Option<EntryKey>) -> bool {
        key.is_none_or(|key| key.first_sighting(&mut self.last, &mut self.at_last, usize::MAX))
    }

    /// `sinceTime` for resuming: the last timestamp seen, rounded down to
    /// the second (the API's precision), so nothing after it is missed.
    pub fn since(&self) -> Option<Timestamp> {
        self.last
            .and_then(|t| Timestamp::from_second(t.as_second()).ok())
    }
}

/// How much of a line is kept for logs (the parser classified all of it).
pub const KEPT_TEXT: usize = 512;

/// One line of the listener's output, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Container ID of the run that wrote it.
    pub container_id: String,
    /// Timestamp the API server put on it.
    pub ts: Option<Timestamp>,
    /// Dedupe key (timestamp and content hash).
    pub key: Option<EntryKey>,
    /// What the parser made of it.
    pub event: ListenerEvent,
    /// The start of the line (at most [`KEPT_TEXT`] bytes, may be invalid
    /// UTF-8), without timestamp and newline.
    pub text: Vec<u8>,
}

/// What a follower tells the main loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowerMsg {
    /// A new line.
    Line(LogLine),
    /// The log call succeeded (the stream is open).
    Connected,
    /// A log call failed; the follower retries after a backoff.
    Error(LogError),
    /// The run's log is complete (the container ended, or another run
    /// replaced it); the follower has stopped.
    Ended {
        /// Container ID of the run.
        container_id: String,
    },
}

/// Why reading the listener's log failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// The API server answered 400: the container is not running (not
    /// started yet, or no longer). Not an API failure.
    #[error("{0}")]
    NotRunning(String),
    /// The log call failed otherwise.
    #[error("{0}")]
    Api(String),
    /// Reading the opened stream failed.
    #[error("{0}")]
    Read(String),
}

impl LogError {
    /// The failure of a log call.
    pub fn from_kube(e: &kube::Error) -> Self {
        match e {
            kube::Error::Api(s) if s.code == 400 => LogError::NotRunning(error_text(e)),
            _ => LogError::Api(error_text(e)),
        }
    }
}

/// Settings of a follower.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// Name of the own pod.
    pub pod: String,
    /// Name of the listener container.
    pub container: String,
    /// Container ID of the run to follow.
    pub container_id: String,
    /// First delay before reconnecting; doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest delay before reconnecting.
    pub max_backoff: Duration,
}

/// Where a followed run stands in the latest pod observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPhase {
    /// Current and not known to have ended (or not seen yet).
    Live,
    /// Current and terminated: one more read gets the rest of its log.
    Ended,
    /// Another run is current: the log the API serves now is that run's,
    /// so reading it again would hand on another run's lines as this one's.
    Replaced,
}

/// The phase of run `container_id` in `view`.
pub fn run_phase(view: &PodView, container_id: &str) -> RunPhase {
    let Some(l) = &view.listener else {
        return RunPhase::Live;
    };
    match &l.container_id {
        Some(id) if id == container_id => {
            if matches!(l.state, ListenerState::Terminated { .. }) {
                RunPhase::Ended
            } else {
                RunPhase::Live
            }
        }
        Some(_) => RunPhase::Replaced,
        None => RunPhase::Live,
    }
}

fn run_is_over(view: &PodView, container_id: &str) -> bool {
    run_phase(view, container_id) != RunPhase::Live
}

/// Follows one listener run until its log is complete or `cancel` fires,
/// sending lines (each exactly once) and connection state to `tx`.
pub async fn follow_run(
    api: Api<Pod>,
    cfg: FollowConfig,
    mut pod_rx: watch::Receiver<PodView>,
    tx: mpsc::Sender<FollowerMsg>,
    cancel: CancellationToken,
) {
    let mut filter = ResumeFilter::default();
    let mut backoff = Backoff::new(cfg.initial_backoff, cfg.max_backoff);
    loop {
        let params = LogParams {
            container: Some(cfg.container.clone()),
            follow: true,
            timestamps: true,
            since_time: filter.since(),
            ..LogParams::default()
        };
        let phase = run_phase(&pod_rx.borrow(), &cfg.container_id);
        if phase == RunPhase::Replaced {
            let _ = tx
                .send(FollowerMsg::Ended {
                    container_id: cfg.container_id.clone(),
                })
                .await;
            return;
        }
        let over_before = phase == RunPhase::Ended;
        let opened = tokio::select! {
            () = cancel.cancelled() => return,
            r = api.log_stream(&cfg.pod, &params) => r,
        };
        match opened {
            Ok(stream) => {
                if tx.send(FollowerMsg::Connected).await.is_err() {
                    return;
                }
                let got = tokio::select! {
                    () = cancel.cancelled() => return,
                    got = read_stream(stream, &cfg.container_id, &mut filter, &tx) => got,
                };
                match got {
                    Ok(n) if n > 0 => backoff.reset(),
                    Ok(_) => {}
                    // A stream cut while reading (idle timeout, API server
                    // restart) is a drop like any other, not an API failure:
                    // the reconnect tells whether the API answers.
                    Err(e) => tracing::debug!(error = %e, "log stream cut; resuming"),
                }
                // The stream was opened after the run had ended: what it
                // sent is the complete log.
                if over_before || run_is_over(&pod_rx.borrow(), &cfg.container_id) {
                    let _ = tx
                        .send(FollowerMsg::Ended {
                            container_id: cfg.container_id.clone(),
                        })
                        .await;
                    return;
                }
            }
            Err(e) => {
                if tx
                    .send(FollowerMsg::Error(LogError::from_kube(&e)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        // Dropped stream or failed call: wait, but wake early when the pod
        // changes (the run may have ended), never spin.
        let delay = backoff.next_delay();
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = &mut sleep => break,
                changed = pod_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if run_is_over(&pod_rx.borrow(), &cfg.container_id) {
                        // One more read of a finished run (the rest of its
                        // log), or none of a replaced one.
                        break;
                    }
                }
            }
        }
    }
}

/// Reads one opened stream to its end. Returns how many new lines it
/// handed on, or the read error.
async fn read_stream(
    stream: impl futures::AsyncBufRead + Unpin,
    container_id: &str,
    filter: &mut ResumeFilter,
    tx: &mpsc::Sender<FollowerMsg>,
) -> Result<usize, LogError> {
    let mut stream = stream;
    // A fresh parser per stream: an unfinished line of a dropped stream is
    // sent again in full after the reconnect.
    let mut parser = Parser::new();
    let mut sent = 0;
    loop {
        let chunk = match stream.fill_buf().await {
            Ok(c) => c,
            Err(e) => return Err(LogError::Read(format!("reading the log stream: {e}"))),
        };
        if chunk.is_empty() {
            return Ok(sent);
        }
        let n = chunk.len();
        let mut lines = Vec::new();
        parser.push(chunk, |entry| {
            let key = entry.key();
            if filter.accept(key) {
                lines.push(LogLine {
                    container_id: container_id.to_owned(),
                    ts: entry.stamp,
                    key,
                    event: entry.event,
                    text: entry.content[..entry.content.len().min(KEPT_TEXT)].to_vec(),
                });
            }
        });
        stream.consume_unpin(n);
        for line in lines {
            if tx.send(FollowerMsg::Line(line)).await.is_err() {
                return Ok(sent);
            }
            sent += 1;
        }
    }
}

/// Reads the listener's current log once, without following: on shutdown
/// this catches the lines a lagging follow stream had not delivered yet.
/// `since` is the newest line timestamp already handed on (rounded down to
/// the second, the API's precision; the detector skips what it has seen);
/// at most the last `tail_lines` lines are read.
pub async fn read_log_once(
    api: &Api<Pod>,
    pod: &str,
    container: &str,
    container_id: &str,
    since: Option<Timestamp>,
    tail_lines: i64,
) -> Result<Vec<LogLine>, LogError> {
    let params = LogParams {
        container: Some(container.to_owned()),
        follow: false,
        timestamps: true,
        since_time: since.and_then(|t| Timestamp::from_second(t.as_second()).ok()),
        tail_lines: Some(tail_lines),
        ..LogParams::default()
    };
    let mut stream = api
        .log_stream(pod, &params)
        .await
        .map_err(|e| LogError::from_kube(&e))?;
    let mut parser = Parser::new();
    let mut lines = Vec::new();
    let to_line = |entry: crate::parser::Entry<'_>| LogLine {
        container_id: container_id.to_owned(),
        ts: entry.stamp,
        key: entry.key(),
        event: entry.event,
        text: entry.content[..entry.content.len().min(KEPT_TEXT)].to_vec(),
    };
    loop {
        let chunk = stream
            .fill_buf()
            .await
            .map_err(|e| LogError::Read(format!("reading the log: {e}")))?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        parser.push(chunk, |e| lines.push(to_line(e)));
        stream.consume_unpin(n);
    }
    parser.finish(|e| lines.push(to_line(e)));
    Ok(lines)
}

/// Short text of a kube error for logs, metrics and `/readyz`.
pub fn error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} {}: {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::pod::ListenerView;

    fn view(id: Option<&str>, state: ListenerState) -> PodView {
        PodView {
            listener: Some(ListenerView {
                container_id: id.map(str::to_owned),
                restart_count: 0,
                state,
                last_terminated: None,
                image: None,
            }),
            ..PodView::default()
        }
    }

    #[test]
    fn a_replaced_run_is_not_read_again() {
        let running = ListenerState::Running { started_at: None };
        let ended = ListenerState::Terminated {
            exit_code: 1,
            reason: None,
            finished_at: None,
        };
        assert_eq!(run_phase(&PodView::default(), "c1"), RunPhase::Live);
        assert_eq!(
            run_phase(&view(None, ListenerState::Waiting(None)), "c1"),
            RunPhase::Live
        );
        assert_eq!(
            run_phase(&view(Some("c1"), running.clone()), "c1"),
            RunPhase::Live
        );
        assert_eq!(run_phase(&view(Some("c1"), ended), "c1"), RunPhase::Ended);
        // Restarted in place: the API now serves c2's log under the same
        // container name.
        assert_eq!(
            run_phase(&view(Some("c2"), running), "c1"),
            RunPhase::Replaced
        );
    }
}
