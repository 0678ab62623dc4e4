//! A stable-toolchain stand-in for the fuzz target (`fuzz/`): malformed,
//! truncated and structurally twisted reviews never panic the handler,
//! always get a JSON answer with status 200 or 400, and whenever a patch is
//! returned it applies to the object it came with, and a valid Pod stays a
//! valid Pod.

// Test helpers outside #[test] functions may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use arc_watchdog_webhook::mutation::{InjectConfig, SidecarMode};
use arc_watchdog_webhook::review::{self, Outcome};
use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

fn input(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/inputs")
            .join(name),
    )
    .unwrap()
}

/// Returns whether a patch was produced.
fn check(data: &[u8]) -> bool {
    let cfg = InjectConfig::new("img");
    let mut injected = false;
    for mode in [SidecarMode::Native, SidecarMode::Classic] {
        let result = review::handle(data, &cfg, mode);
        assert!(
            result.status == 200 || result.status == 400,
            "status {}",
            result.status
        );
        let answer: Value = serde_json::from_slice(&result.body).unwrap();
        if result.status == 400 {
            assert!(answer["error"].is_string());
            continue;
        }
        assert_eq!(answer["response"]["allowed"], true);
        if !matches!(result.outcome, Outcome::Injected(_)) {
            assert!(answer["response"].get("patch").is_none());
            continue;
        }
        injected = true;
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(answer["response"]["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let request: Value = serde_json::from_slice(data).unwrap();
        let mut pod = request["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).unwrap_or_else(|e| {
            panic!(
                "patch does not apply: {e}\nobject: {}\npatch: {}",
                request["request"]["object"],
                serde_json::to_string(&patch).unwrap()
            )
        });
        // A valid Pod stays valid. (The handler reads the object through
        // kube's DynamicObject, which tolerates things a Pod does not, such
        // as `apiVersion: null`; such objects are the API server's to reject.)
        if serde_json::from_value::<Pod>(request["request"]["object"].clone()).is_ok() {
            let _: Pod = serde_json::from_value(pod).unwrap();
        }
    }
    injected
}

fn pointers(v: &Value, at: String, out: &mut Vec<String>, depth: usize) {
    out.push(at.clone());
    if depth == 0 {
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let token = k.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{at}/{token}"), out, depth - 1);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out, depth - 1);
            }
        }
        _ => {}
    }
}

#[test]
fn every_field_replaced_by_every_kind_of_value() {
    let replacements = [
        Value::Null,
        json!("x"),
        json!(0),
        json!({}),
        json!([]),
        json!(true),
    ];
    let mut variants = 0;
    let mut injected = 0;
    for name in [
        "listener-0.14.2.json",
        "listener-0.14.2-template-init-sidecar-integrity-hash.json",
        "listener-minimal-no-annotations-init-volumes.json",
    ] {
        let original: Value = serde_json::from_slice(&input(name)).unwrap();
        let mut paths = Vec::new();
        pointers(&original, String::new(), &mut paths, 8);
        for path in paths.iter().filter(|p| !p.is_empty()) {
            for replacement in &replacements {
                let mut variant = original.clone();
                *variant.pointer_mut(path).unwrap() = replacement.clone();
                if check(&serde_json::to_vec(&variant).unwrap()) {
                    injected += 1;
                }
                variants += 1;
            }
            // And with the field removed.
            let mut variant = original.clone();
            let (parent, last) = path.rsplit_once('/').unwrap();
            match variant.pointer_mut(parent).unwrap() {
                Value::Object(m) => {
                    m.remove(&last.replace("~1", "/").replace("~0", "~"));
                }
                Value::Array(a) => {
                    a.remove(last.parse().unwrap());
                }
                _ => unreachable!(),
            }
            check(&serde_json::to_vec(&variant).unwrap());
            variants += 1;
        }
    }
    assert!(variants > 1000, "{variants}");
    // Many twists leave a listener pod that still gets the watchdog, so
    // the patch path is exercised, not only the refusals.
    assert!(injected > variants / 10, "{injected} of {variants}");
}

#[test]
fn truncated_and_corrupted_bytes() {
    let data = input("listener-0.9.3-user-sidecar.json");
    for end in (0..data.len()).step_by(13) {
        check(&data[..end]);
    }
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..400 {
        let mut bytes = data.clone();
        for _ in 0..3 {
            // xorshift: deterministic, no extra crate.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let i = usize::try_from(state % bytes.len() as u64).unwrap();
            bytes[i] = (state >> 32) as u8;
        }
        check(&bytes);
    }
    assert!(check(&data));
}

#[test]
fn inputs_found_by_the_fuzzer() {
    // Bodies the fuzz target turned up; kept so they run on stable.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        for mode in [SidecarMode::Native, SidecarMode::Classic] {
            let result = review::handle(&data, &InjectConfig::new("img"), mode);
            assert!(result.status == 200 || result.status == 400);
            let _: Value = serde_json::from_slice(&result.body).unwrap();
        }
        seen += 1;
    }
    assert!(seen >= 1);
}
