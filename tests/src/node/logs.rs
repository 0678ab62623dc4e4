//! Container logs as the fake kubelet keeps and serves them: per container,
//! the current run's lines and the previous run's, each with the time it
//! was appended; and a containerLogs request answered from them as the
//! kubelet answers it (`follow`, `timestamps`, `sinceTime`,
//! `sinceSeconds`, `tailLines`, `previous`), a followed stream ending with
//! its run.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Response, StatusCode};
use jiff::Timestamp;
use tokio::sync::watch;

use super::server::{Body, text};

/// Which container's log: namespace, pod, container.
pub type LogKey = (String, String, String);

#[derive(Debug)]
struct Buffer {
    /// Current run's lines with their timestamps.
    lines: Vec<(Timestamp, String)>,
    /// The previous run's lines (`previous=true`).
    previous: Vec<(Timestamp, String)>,
    /// The container terminated: followers get EOF after the last line.
    ended: bool,
    /// Bumped on every change; followers wait on it.
    version: watch::Sender<u64>,
}

impl Buffer {
    fn new() -> Self {
        Self {
            lines: Vec::new(),
            previous: Vec::new(),
            ended: false,
            version: watch::Sender::new(0),
        }
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }
}

/// In-memory container logs, shared between the test and the server.
#[derive(Debug, Clone, Default)]
pub struct Logs {
    inner: Arc<Mutex<HashMap<LogKey, Buffer>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

fn key(ns: &str, pod: &str, container: &str) -> LogKey {
    (ns.to_owned(), pod.to_owned(), container.to_owned())
}

impl Logs {
    fn with<R>(&self, k: LogKey, f: impl FnOnce(&mut Buffer) -> R) -> R {
        let mut map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(map.entry(k).or_insert_with(Buffer::new))
    }

    /// Appends one line (without trailing newline) to a container's current run.
    pub fn append(&self, ns: &str, pod: &str, container: &str, line: &str) {
        self.with(key(ns, pod, container), |b| {
            b.lines.push((Timestamp::now(), line.to_owned()));
            b.bump();
        });
    }

    /// Marks the container's current run terminated: following streams end.
    pub fn end(&self, ns: &str, pod: &str, container: &str) {
        self.with(key(ns, pod, container), |b| {
            b.ended = true;
            b.bump();
        });
    }

    /// Starts a new run of the container (a restart in place, or a new pod
    /// generation with the same name): the current lines become `previous`,
    /// and open follow streams of the old run end.
    pub fn restart(&self, ns: &str, pod: &str, container: &str) {
        self.with(key(ns, pod, container), |b| {
            b.previous = std::mem::take(&mut b.lines);
            b.ended = false;
            // Replace the sender: followers of the old run see it closed.
            let old = std::mem::replace(&mut b.version, watch::Sender::new(0));
            drop(old);
        });
    }

    /// Forgets every container log of pod `ns/pod`: a new pod with the same
    /// name (ARC reuses listener names) has new containers and empty logs.
    /// Open follow streams of the old pod end.
    pub fn forget_pod(&self, ns: &str, pod: &str) {
        let mut map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|(n, p, _), _| !(n == ns && p == pod));
    }

    /// Every containerLogs request served so far (`path?query`), oldest
    /// first: what the API server asked on behalf of its clients.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The current run's lines with the timestamps they are served with
    /// (what a resumed stream's `sinceTime` is compared with).
    pub fn stamped_lines(&self, ns: &str, pod: &str, container: &str) -> Vec<(Timestamp, String)> {
        self.with(key(ns, pod, container), |b| b.lines.clone())
    }

    /// The current run's lines (without timestamps).
    pub fn lines(&self, ns: &str, pod: &str, container: &str) -> Vec<String> {
        self.with(key(ns, pod, container), |b| {
            b.lines.iter().map(|(_, l)| l.clone()).collect()
        })
    }
}

/// What the API server asked for (the kubelet's containerLogs query).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogQuery {
    /// `follow=true`.
    pub follow: bool,
    /// `timestamps=true`: each line prefixed by an RFC 3339 timestamp and a space.
    pub timestamps: bool,
    /// `previous=true`.
    pub previous: bool,
    /// `sinceTime=` (RFC 3339): lines at or after it.
    pub since_time: Option<Timestamp>,
    /// `sinceSeconds=`.
    pub since_seconds: Option<i64>,
    /// `tailLines=`.
    pub tail_lines: Option<usize>,
}

impl LogQuery {
    /// Parses the query string of a containerLogs request.
    pub fn parse(query: &str) -> Result<Self> {
        let mut q = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            let flag = v == "true" || v == "1";
            match k {
                "follow" => q.follow = flag,
                "timestamps" => q.timestamps = flag,
                "previous" => q.previous = flag,
                "sinceTime" => {
                    q.since_time = Some(v.parse().with_context(|| format!("sinceTime {v:?}"))?)
                }
                "sinceSeconds" => {
                    q.since_seconds =
                        Some(v.parse().with_context(|| format!("sinceSeconds {v:?}"))?)
                }
                "tailLines" => {
                    q.tail_lines = Some(v.parse().with_context(|| format!("tailLines {v:?}"))?)
                }
                _ => {}
            }
        }
        Ok(q)
    }

    fn since(&self, now: Timestamp) -> Option<Timestamp> {
        let by_seconds = self
            .since_seconds
            .and_then(|s| now.checked_sub(jiff::SignedDuration::from_secs(s)).ok());
        match (self.since_time, by_seconds) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Renders one line as the kubelet does.
    pub fn render(&self, ts: Timestamp, line: &str) -> String {
        if self.timestamps {
            // RFC 3339 with nanoseconds, as the kubelet's CRI log lines.
            format!("{} {line}\n", ts.strftime("%Y-%m-%dT%H:%M:%S%.9fZ"))
        } else {
            format!("{line}\n")
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn serve_logs(logs: &Logs, path: &str, query: &str) -> Response<Body> {
    if let Ok(mut r) = logs.requests.lock() {
        r.push(format!("{path}?{query}"));
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let [_, ns, pod, container] = parts.as_slice() else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let q = match LogQuery::parse(query) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("{e:#}\n")),
    };
    let k = key(ns, pod, container);
    let since = q.since(Timestamp::now());
    let keep = move |ts: &Timestamp| since.is_none_or(|s| *ts >= s);
    let (initial, mut rx, ended, start_index) = logs.with(k.clone(), |b| {
        let source = if q.previous { &b.previous } else { &b.lines };
        let mut selected: Vec<(Timestamp, String)> =
            source.iter().filter(|(ts, _)| keep(ts)).cloned().collect();
        if let Some(n) = q.tail_lines {
            selected = selected.split_off(selected.len().saturating_sub(n));
        }
        (
            selected,
            b.version.subscribe(),
            b.ended || q.previous,
            source.len(),
        )
    });
    let mut head = String::new();
    for (ts, l) in &initial {
        head.push_str(&q.render(*ts, l));
    }
    if !q.follow || ended {
        return Response::new(Full::new(Bytes::from(head)).boxed());
    }
    // Follow: first what exists, then every new line as its own chunk (so it
    // is flushed at once), until the run ends.
    let logs = logs.clone();
    let first = futures::stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from(head)))]);
    rx.mark_unchanged();
    let rest = futures::stream::unfold(
        (start_index, rx, false),
        move |(mut index, mut rx, done)| {
            let logs = logs.clone();
            let k = k.clone();
            let q = q.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    let (chunk, ended) = logs.with(k.clone(), |b| {
                        let mut chunk = String::new();
                        for (ts, l) in b.lines.iter().skip(index) {
                            chunk.push_str(&q.render(*ts, l));
                        }
                        index = b.lines.len().max(index);
                        (chunk, b.ended)
                    });
                    if !chunk.is_empty() {
                        return Some((Ok(Frame::data(Bytes::from(chunk))), (index, rx, ended)));
                    }
                    // A closed sender means a new run started: this one is over.
                    if ended || rx.changed().await.is_err() {
                        return None;
                    }
                }
            }
        },
    );
    Response::new(BodyExt::boxed(StreamBody::new(first.chain(rest))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsed() {
        let q = LogQuery::parse(
            "follow=true&timestamps=true&sinceTime=2026-01-02T03%3A04%3A05Z&tailLines=5",
        )
        .unwrap();
        assert!(q.follow && q.timestamps && !q.previous);
        assert_eq!(q.since_time, Some("2026-01-02T03:04:05Z".parse().unwrap()));
        assert_eq!(q.tail_lines, Some(5));
        assert!(LogQuery::parse("sinceTime=yesterday").is_err());
    }

    #[test]
    fn lines_rendered_like_the_kubelet() {
        let ts: Timestamp = "2026-01-02T03:04:05.5Z".parse().unwrap();
        let q = LogQuery {
            timestamps: true,
            ..LogQuery::default()
        };
        assert_eq!(
            q.render(ts, "hello"),
            "2026-01-02T03:04:05.500000000Z hello\n"
        );
        assert_eq!(LogQuery::default().render(ts, "hello"), "hello\n");
    }

    #[test]
    fn since_time_and_tail_filter() {
        let logs = Logs::default();
        logs.append("n", "p", "c", "one");
        logs.append("n", "p", "c", "two");
        logs.append("n", "p", "c", "three");
        let resp = serve_logs(&logs, "/containerLogs/n/p/c", "tailLines=2");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = futures::executor::block_on(resp.into_body().collect())
            .unwrap()
            .to_bytes();
        assert_eq!(body, Bytes::from("two\nthree\n"));
        let resp = serve_logs(
            &logs,
            "/containerLogs/n/p/c",
            "sinceTime=2999-01-01T00:00:00Z",
        );
        let body = futures::executor::block_on(resp.into_body().collect())
            .unwrap()
            .to_bytes();
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn follow_streams_new_lines_and_ends_with_the_run() {
        let logs = Logs::default();
        logs.append("n", "p", "c", "first");
        let resp = serve_logs(&logs, "/containerLogs/n/p/c", "follow=true");
        let mut body = resp.into_body();
        let f = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(f, Bytes::from("first\n"));
        logs.append("n", "p", "c", "second");
        let f = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(f, Bytes::from("second\n"));
        logs.end("n", "p", "c");
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Ab+c"), "a:b c");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
