//! `webhook-at-scale`: the release webhook against the real kube-apiserver
//! (the harness's [`ControlPlane`], installed from `manifests/` as a user
//! would, the webhook as a process with its own ServiceAccount) with many
//! ARC listeners: how long until its controller has made every
//! per-listener object, its resident memory then, and its admission
//! latency under concurrent reviews against the serde floor on the same
//! TLS and HTTP stack, measured in the same run.

mod populate;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use anyhow::Context as _;
use arc_watchdog_tests::control_plane::{ControlPlane, LISTENER_NAMESPACE, Webhook};

use crate::load::{self, Expect, LoadConfig, Side};
use crate::proc::{self, mib};
use crate::{Figure, ScaleArgs};

/// The memory goal of the webhook at scale, in MiB.
const RSS_GOAL_MIB: f64 = 64.0;

/// The `webhook-at-scale-*` figures.
pub async fn measure(args: &ScaleArgs) -> anyhow::Result<Vec<Figure>> {
    let bin = proc::binary(&args.bins.bin_dir, "arc-watchdog-webhook")?;
    let load = &args.load;
    let began = Instant::now();
    let cp = ControlPlane::start()
        .await
        .context("starting etcd and kube-apiserver")?;
    cp.prepare_arc_watchdog()
        .await
        .context("installing ARC's CRDs and manifests/")?;
    let kubeconfig = cp.webhook_kubeconfig().await?;
    // Flags as installed: every controller on, the sidecar mode from the
    // cluster.
    let webhook = Webhook::start_binary(&cp, "webhook", &bin, &kubeconfig, &[]).await?;
    webhook.register(&cp).await?;
    let pid = webhook.pid().context("the webhook has no pid")?;
    let client = cp.admin_client().await?;
    eprintln!(
        "webhook-at-scale: control plane and webhook ready after {:.1} s; creating {} listeners",
        began.elapsed().as_secs_f64(),
        load.listeners
    );

    let cpu_before = proc::cpu_time(pid)?;
    let populated = populate::populate(
        &client,
        LISTENER_NAMESPACE,
        load.listeners,
        load.create_concurrency,
        load.objects_timeout,
    )
    .await
    .with_context(|| format!("filling the control plane; its logs:\n{}", cp.logs(20)))?;
    let rss_kib = proc::vm_rss_kib(pid)?;
    let hwm_kib = proc::vm_hwm_kib(pid)?;
    eprintln!(
        "webhook-at-scale: {} objects after {:.1} s; webhook: {:.1} s CPU meanwhile, {}",
        populated.object_count,
        populated.objects.as_secs_f64(),
        (proc::cpu_time(pid)? - cpu_before).as_secs_f64(),
        proc::rss_breakdown(pid)
    );

    // The serde floor on the webhook's own certificate and the webhook,
    // loaded in turns with the same load; the webhook keeps its watches
    // meanwhile.
    let cert = webhook.cert_dir.join(arc_watchdog_certs::TLS_CERT_FILE);
    let key = webhook.cert_dir.join(arc_watchdog_certs::TLS_KEY_FILE);
    let tls = load::client_config(webhook.ca_pem())?;
    let body = load::compact_review()?;
    let rounds = load.review_rounds.max(1);
    let cfg = LoadConfig::per_turn(
        load.review_concurrency,
        load.review_requests,
        load.review_duration,
        load.review_warmup,
        rounds,
    );
    let (mut floor, floor_addr) =
        load::spawn_echo(&cert, &key, true, &cp.dir().join("serde-floor.log")).await?;
    let turns = load::in_turns(
        &Side {
            addr: floor_addr,
            expect: Expect::Echo(body.clone()),
            name: "the serde floor".to_owned(),
        },
        &Side {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, webhook.port)),
            expect: Expect::Injected,
            name: "the webhook".to_owned(),
        },
        &tls,
        &body,
        cfg,
        rounds,
    )
    .await
    .with_context(|| format!("the control plane's logs:\n{}", cp.logs(20)));
    proc::stop(&mut floor).await;
    let turns = turns?;
    let (baseline, result) = turns.pooled();
    eprintln!(
        "webhook-at-scale: {:.0} reviews/s (serde floor {:.0}/s); after {} reviews: VmHWM {:.1} MiB, {}; whole run {:.0} s",
        result.rps(),
        baseline.rps(),
        result.requests,
        mib(proc::vm_hwm_kib(pid)?),
        proc::rss_breakdown(pid),
        began.elapsed().as_secs_f64()
    );
    drop(webhook);
    drop(cp);

    let n = load.listeners;
    let floor_name = |q: &str, ms: f64, turns: &str| {
        format!(
            "serde-floor ({q} {ms:.2} ms; {turns}, same TLS+HTTP stack, c={}, {rounds} alternating turns each, {n} listeners watched)",
            cfg.concurrency
        )
    };
    let goal = |what: &str| format!("goal ({RSS_GOAL_MIB:.0} MiB; {what} with {n} listeners)");
    let latency = |name: &str, q: f64, label: &str| {
        let (ratio, ratios) = turns.quantile_ratios(q);
        let ratios: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        Figure::new(name, format!("{:.2}", result.quantile_ms(q)), "ms").against(
            ratio,
            floor_name(
                label,
                baseline.quantile_ms(q),
                &format!("the median of the turns' ratios, {}", ratios.join(" ")),
            ),
        )
    };
    Ok(vec![
        Figure::new(
            "webhook-at-scale-objects",
            format!("{:.1}", populated.objects.as_secs_f64()),
            "s",
        )
        .against(
            populated.objects.as_secs_f64() / populated.created.as_secs_f64(),
            format!(
                "creating {n} listeners ({:.1} s, {} at a time; {}/{n} pods injected, {} objects)",
                populated.created.as_secs_f64(),
                load.create_concurrency,
                populated.injected,
                populated.object_count
            ),
        ),
        Figure::new(
            "webhook-at-scale-vmrss",
            format!("{:.1}", mib(rss_kib)),
            "MiB",
        )
        .against(mib(rss_kib) / RSS_GOAL_MIB, goal("VmRSS")),
        Figure::new(
            "webhook-at-scale-vmhwm",
            format!("{:.1}", mib(hwm_kib)),
            "MiB",
        )
        .against(mib(hwm_kib) / RSS_GOAL_MIB, goal("VmHWM")),
        latency("webhook-at-scale-admission-p99", 0.99, "p99"),
        latency("webhook-at-scale-admission-p50", 0.50, "p50"),
    ])
}
