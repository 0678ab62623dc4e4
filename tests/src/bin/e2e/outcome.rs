//! A scenario's outcome: its `scenario <id>: PASS|FAIL <numbers>` line and
//! the Markdown report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};

/// One scenario's outcome on one ARC version.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// `<scenario>@<ARC version>`, e.g. `S2-stale-session-120s@0.14.2`.
    pub(crate) id: String,
    /// The ARC version, and the listener when not the default one.
    pub(crate) version: String,
    pub(crate) pass: bool,
    pub(crate) numbers: Vec<(String, String)>,
    pub(crate) notes: Vec<String>,
}

impl Outcome {
    /// A passing outcome with nothing recorded yet. `name` may be empty for
    /// the part of an outcome that one leg records (see [`Self::merge`]).
    pub(crate) fn new(name: &str, version: &str) -> Self {
        Self {
            id: format!("{name}@{version}"),
            version: version.to_owned(),
            pass: true,
            numbers: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub(crate) fn num(&mut self, k: &str, v: impl ToString) {
        self.numbers.push((k.to_owned(), v.to_string()));
    }

    /// A number recorded before, by key.
    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.numbers
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        if ok {
            self.notes.push(format!("ok: {what}"));
        } else {
            self.pass = false;
            self.notes.push(format!("FAILED: {what}"));
        }
    }

    /// Takes in what one leg recorded: its numbers, its notes, its failures.
    pub(crate) fn merge(&mut self, leg: Outcome) {
        self.pass &= leg.pass;
        self.numbers.extend(leg.numbers);
        self.notes.extend(leg.notes);
    }

    /// Runs a scenario's two legs at once (without and with arc-watchdog,
    /// each on a stack of its own), each recording into a part of its own,
    /// and takes both parts in before either result is looked at: a leg
    /// that fails keeps what it recorded up to then.
    pub(crate) async fn side_by_side<A, B>(
        &mut self,
        without: impl AsyncFnOnce(&mut Outcome) -> Result<A>,
        with: impl AsyncFnOnce(&mut Outcome) -> Result<B>,
    ) -> (Result<A>, Result<B>) {
        let (mut a, mut b) = (
            Outcome::new("", &self.version),
            Outcome::new("", &self.version),
        );
        let results = tokio::join!(without(&mut a), with(&mut b));
        self.merge(a);
        self.merge(b);
        results
    }

    pub(crate) fn line(&self) -> String {
        let nums: Vec<String> = self
            .numbers
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "scenario {}: {} {}",
            self.id,
            if self.pass { "PASS" } else { "FAIL" },
            nums.join(" ")
        )
    }
}

/// Columns of the version table: (scenario prefix, number, heading).
const VERSION_COLUMNS: &[(&str, &str, &str)] = &[
    ("S2-stale-session", "stale_ttl_s", "stale session (s)"),
    (
        "S2-stale-session",
        "generation_s_without",
        "one generation without (s)",
    ),
    (
        "S2-stale-session",
        "retries_in_process",
        "listener retries a 409 in process",
    ),
    (
        "S2-stale-session",
        "session_calls_without",
        "session calls without",
    ),
    ("S2-stale-session", "session_calls_with", "with"),
    ("S2-stale-session", "ratio", "ratio"),
    (
        "S2-stale-session",
        "heal_after_expiry_without_s",
        "heal after expiry without (s)",
    ),
    ("S2-stale-session", "heal_after_expiry_s", "with (s)"),
    ("S2-stale-session", "added_outage_s", "outage added (s)"),
    (
        "S3-dead-listener",
        "without_recreated_after_s",
        "dead listener replaced without (s)",
    ),
    ("S3-dead-listener", "with_recreated_after_s", "with (s)"),
    (
        "S3-dead-listener",
        "with_evicted_after_exit_s",
        "evicted after exit (s)",
    ),
];

/// The table of what each ARC version does by itself and with arc-watchdog:
/// one row per version label (e.g. `0.10.1`, `0.10.1-legacy`) and S2
/// lifetime, S3's numbers on every row of their version; versions in order.
pub(crate) fn version_table(outcomes: &[Outcome]) -> String {
    type Row = BTreeMap<&'static str, String>;
    let values = |o: &Outcome, prefix: &str| -> Row {
        VERSION_COLUMNS
            .iter()
            .filter(|(scenario, _, _)| *scenario == prefix)
            .filter_map(|(_, key, _)| o.get(key).map(|v| (*key, v.to_owned())))
            .collect()
    };
    let name = |o: &Outcome| o.id.split_once('@').map_or("", |(n, _)| n).to_owned();
    let mut s3: BTreeMap<String, Row> = BTreeMap::new();
    for o in outcomes
        .iter()
        .filter(|o| name(o).starts_with("S3-dead-listener"))
    {
        s3.insert(o.version.clone(), values(o, "S3-dead-listener"));
    }
    // Rows in version order, then label, then lifetime.
    type RowKey = ((u32, u32, u32), String, u64);
    let mut rows: BTreeMap<RowKey, Row> = BTreeMap::new();
    for o in outcomes
        .iter()
        .filter(|o| name(o).starts_with("S2-stale-session"))
    {
        let ttl = o
            .get("stale_ttl_s")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let mut row = values(o, "S2-stale-session");
        row.extend(s3.get(&o.version).cloned().unwrap_or_default());
        rows.insert(
            (crate::version_key(&o.version), o.version.clone(), ttl),
            row,
        );
    }
    for (version, row) in &s3 {
        if !rows.keys().any(|(_, label, _)| label == version) {
            rows.insert(
                (crate::version_key(version), version.clone(), 0),
                row.clone(),
            );
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from("| ARC |");
    for (_, _, heading) in VERSION_COLUMNS {
        let _ = write!(md, " {heading} |");
    }
    md.push_str("\n| --- |");
    for _ in VERSION_COLUMNS {
        md.push_str(" --- |");
    }
    md.push('\n');
    for ((_, label, _), row) in &rows {
        let _ = write!(md, "| {label} |");
        for (_, key, _) in VERSION_COLUMNS {
            let _ = write!(md, " {} |", row.get(key).map_or("", String::as_str));
        }
        md.push('\n');
    }
    md
}

pub(crate) fn write_report(path: &Path, outcomes: &[Outcome], total: Duration) -> Result<()> {
    let mut md = String::from("# arc-watchdog end-to-end report\n\n");
    let _ = writeln!(
        md,
        "Real ARC controller and listener (built from ARC's release sources), real kube-apiserver/etcd, fake GitHub, process kubelet. Total {:.0}s.\n",
        total.as_secs_f64()
    );
    md.push_str("| scenario | result | numbers |\n| --- | --- | --- |\n");
    for o in outcomes {
        let nums: Vec<String> = o.numbers.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            o.id,
            if o.pass { "PASS" } else { "FAIL" },
            nums.join(" ")
        );
    }
    let table = version_table(outcomes);
    if !table.is_empty() {
        let _ = writeln!(md, "\n## ARC versions\n\n{table}");
    }
    for o in outcomes {
        let _ = writeln!(md, "\n## {}\n", o.id);
        for n in &o.notes {
            let _ = writeln!(md, "- {}", n.replace('\n', "\n  "));
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(name: &str, version: &str, numbers: &[(&str, &str)]) -> Outcome {
        let mut o = Outcome::new(name, version);
        for (k, v) in numbers {
            o.num(k, v);
        }
        o
    }

    #[test]
    fn version_table_orders_versions_and_puts_s3_on_their_rows() {
        let outcomes = [
            outcome(
                "S2-stale-session-120s",
                "0.14.2",
                &[("stale_ttl_s", "120"), ("ratio", "6.3")],
            ),
            outcome(
                "S2-stale-session-600s",
                "0.14.2",
                &[("stale_ttl_s", "600"), ("ratio", "12.0")],
            ),
            outcome(
                "S2-stale-session-120s",
                "0.10.1-legacy",
                &[("stale_ttl_s", "120"), ("ratio", "0.8")],
            ),
            outcome(
                "S2-stale-session-120s",
                "0.9.2",
                &[("stale_ttl_s", "120"), ("ratio", "6.3")],
            ),
            outcome(
                "S3-dead-listener",
                "0.9.2",
                &[("without_recreated_after_s", "never")],
            ),
            outcome(
                "S3-dead-listener",
                "0.8.1",
                &[("without_recreated_after_s", "never")],
            ),
            outcome("S1-healthy", "0.14.2", &[("ratio", "99")]),
        ];
        let table = version_table(&outcomes);
        let labels: Vec<&str> = table
            .lines()
            .skip(2)
            .filter_map(|l| l.split('|').nth(1))
            .map(str::trim)
            .collect();
        assert_eq!(
            labels,
            ["0.8.1", "0.9.2", "0.10.1-legacy", "0.14.2", "0.14.2"]
        );
        let row_092 = table.lines().find(|l| l.starts_with("| 0.9.2 |")).unwrap();
        assert!(
            row_092.contains("| never |") && row_092.contains("| 6.3 |"),
            "{row_092}"
        );
        assert!(!table.contains("99"), "S1 has no column: {table}");
    }
}
