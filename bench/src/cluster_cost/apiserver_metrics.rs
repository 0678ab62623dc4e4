//! What the kube-apiserver says about its own load, from its `/metrics`
//! text: requests served (`apiserver_request_total`) and requests held
//! open (`apiserver_longrunning_requests`), keyed by verb and resource,
//! and the arithmetic on them (differences of scrapes, rates, a baseline
//! taken off). Pure: the scrape itself is in the caller.

use std::collections::BTreeMap;
use std::fmt;

/// What a request was about: verb, resource and subresource (the API
/// group is left out: every resource here is known by its name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestKind {
    /// `GET`, `LIST`, `WATCH`, `POST`, `PUT`, `PATCH`, `DELETE`, ...
    pub verb: String,
    /// e.g. `pods`, `leases`, `events`; empty for non-resource URLs.
    pub resource: String,
    /// e.g. `log`, `eviction`, `status`; often empty.
    pub subresource: String,
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        Ok(())
    }
}

/// Counts (or gauges) by kind of request.
pub type ByKind = BTreeMap<RequestKind, f64>;

/// The two series of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// `apiserver_request_total`, summed over codes, scopes and versions.
    pub served: ByKind,
    /// `apiserver_longrunning_requests`, summed likewise.
    pub held: ByKind,
    /// `go_goroutines`: what each held stream keeps alive shows here
    /// exactly, where memory moves with garbage collection.
    pub goroutines: f64,
}

/// Name of the counter of requests served.
const SERVED: &str = "apiserver_request_total";
/// Name of the gauge of long-running requests (watches, log streams).
const HELD: &str = "apiserver_longrunning_requests";
/// Name of the Go runtime's goroutine gauge.
const GOROUTINES: &str = "go_goroutines";

/// Reads both series from Prometheus text. Requests for non-resource URLs
/// (`/metrics`, `/readyz`: the bench's own scrapes) are left out.
pub fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        if name == GOROUTINES {
            scrape.goroutines = value;
            continue;
        }
        let into = match name {
            SERVED => &mut scrape.served,
            HELD => &mut scrape.held,
            _ => continue,
        };
        let label = |key: &str| label_value(labels, key).unwrap_or_default();
        let kind = RequestKind {
            verb: label("verb"),
            resource: label("resource"),
            subresource: label("subresource"),
        };
        if kind.resource.is_empty() {
            continue;
        }
        *into.entry(kind).or_default() += value;
    }
    scrape
}

/// The value of label `key` in `a="x",b="y"}` (the text after `{`).
fn label_value(labels: &str, key: &str) -> Option<String> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let rest = &labels[start..];
    // Label values here (verbs, resource names) have no escaped quotes.
    Some(rest[..rest.find('"')?].to_owned())
}

/// `after - before`, kind by kind, leaving out kinds that did not move.
pub fn diff(after: &ByKind, before: &ByKind) -> ByKind {
    let mut out = ByKind::new();
    for (kind, a) in after {
        let d = a - before.get(kind).copied().unwrap_or(0.0);
        if d != 0.0 {
            out.insert(kind.clone(), d);
        }
    }
    for (kind, b) in before {
        if !after.contains_key(kind) && *b != 0.0 {
            out.insert(kind.clone(), -b);
        }
    }
    out
}

/// `a * scale`, kind by kind.
pub fn scaled(a: &ByKind, scale: f64) -> ByKind {
    a.iter().map(|(k, v)| (k.clone(), v * scale)).collect()
}

/// The sum over kinds.
pub fn total(a: &ByKind) -> f64 {
    a.values().sum()
}

/// The value for `verb resource[/subresource]` (0 when absent).
pub fn get(a: &ByKind, verb: &str, resource: &str, subresource: &str) -> f64 {
    a.get(&RequestKind {
        verb: verb.to_owned(),
        resource: resource.to_owned(),
        subresource: subresource.to_owned(),
    })
    .copied()
    .unwrap_or(0.0)
}

/// `kind value, kind value, ...` with `decimals`, leaving out values that
/// round to zero; `none` when nothing is left.
pub fn show(a: &ByKind, decimals: usize) -> String {
    let limit = 0.5 / 10f64.powi(i32::try_from(decimals).unwrap_or(0));
    let parts: Vec<String> = a
        .iter()
        .filter(|(_, v)| v.abs() >= limit)
        .map(|(k, v)| format!("{k} {v:.decimals$}"))
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="log",verb="GET",version="v1"} 3
apiserver_request_total{code="404",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="log",verb="GET",version="v1"} 1
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PUT",version="v1"} 7
apiserver_request_total{code="200",component="",dry_run="",group="",resource="",scope="",subresource="/metrics",verb="GET",version=""} 12
apiserver_longrunning_requests{component="apiserver",group="",resource="pods",scope="namespace",subresource="",verb="WATCH",version="v1"} 2
apiserver_longrunning_requests{component="apiserver",group="",resource="pods",scope="resource",subresource="log",verb="GET",version="v1"} 1
apiserver_request_duration_seconds_bucket{verb="GET",resource="pods",le="1"} 99
go_goroutines 1234
"#;

    fn kind(verb: &str, resource: &str, sub: &str) -> RequestKind {
        RequestKind {
            verb: verb.into(),
            resource: resource.into(),
            subresource: sub.into(),
        }
    }

    #[test]
    fn parse_sums_codes_and_skips_non_resource_urls_and_other_series() {
        let s = parse(TEXT);
        assert_eq!(s.served.len(), 2, "{s:?}");
        assert_eq!(get(&s.served, "GET", "pods", "log"), 4.0);
        assert_eq!(get(&s.served, "PUT", "leases", ""), 7.0);
        assert_eq!(get(&s.held, "WATCH", "pods", ""), 2.0);
        assert_eq!(get(&s.held, "GET", "pods", "log"), 1.0);
        assert_eq!(s.goroutines, 1234.0);
    }

    #[test]
    fn diff_keeps_what_moved() {
        let before: ByKind = [
            (kind("GET", "pods", ""), 5.0),
            (kind("PUT", "leases", ""), 2.0),
        ]
        .into();
        let after: ByKind = [
            (kind("GET", "pods", ""), 5.0),
            (kind("PUT", "leases", ""), 4.0),
            (kind("POST", "events", ""), 1.0),
        ]
        .into();
        let d = diff(&after, &before);
        assert_eq!(d.len(), 2);
        assert_eq!(get(&d, "PUT", "leases", ""), 2.0);
        assert_eq!(get(&d, "POST", "events", ""), 1.0);
        assert_eq!(total(&d), 3.0);
        assert_eq!(show(&d, 0), "POST events 1, PUT leases 2");
        assert_eq!(show(&scaled(&d, 0.0), 1), "none");
    }
}
