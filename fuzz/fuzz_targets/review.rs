//! Fuzzes the review handler: any bytes in, never a panic; the answer is
//! always JSON with status 200 or 400; an injected pod's patch always
//! applies to the object it came with, and a valid Pod stays valid.

#![no_main]

use arc_watchdog_webhook::mutation::{InjectConfig, SidecarMode};
use arc_watchdog_webhook::review::{self, Outcome};
use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let cfg = InjectConfig::new("ghcr.io/example/arc-watchdog:0.1.0");
    for mode in [SidecarMode::Native, SidecarMode::Classic] {
        let result = review::handle(data, &cfg, mode);
        assert!(
            result.status == 200 || result.status == 400,
            "status {}",
            result.status
        );
        let answer: Value = serde_json::from_slice(&result.body).expect("answer is JSON");
        if !matches!(result.outcome, Outcome::Injected(_)) {
            continue;
        }
        let patch = base64::engine::general_purpose::STANDARD
            .decode(
                answer["response"]["patch"]
                    .as_str()
                    .expect("injected answer has a base64 patch"),
            )
            .expect("patch is standard base64");
        let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("patch is JSON");
        // The handler's typed parse skips unknown fields without checking
        // them, so it accepts bodies that a `Value` refuses (a lone UTF-16
        // surrogate escape in an ignored field, found by this target). The
        // answer is still right; the patch check needs the object as a Value.
        let Ok(request) = serde_json::from_slice::<Value>(data) else {
            continue;
        };
        let mut pod = request["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).expect("patch applies");
        if serde_json::from_value::<Pod>(request["request"]["object"].clone()).is_ok() {
            let _: Pod = serde_json::from_value(pod).expect("a valid Pod stays valid");
        }
    }
});
