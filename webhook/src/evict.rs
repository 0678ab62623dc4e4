//! Evicting a listener pod through the Eviction API, with the body built
//! here: kube's `Api::evict` sends its delete options under a key the API
//! server ignores (`delete_options`), and with it the UID condition and the
//! grace period.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::Eviction;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta, Preconditions};
use kube::api::{Api, PostParams};

/// Evicts the pod `namespace`/`name` only if it is still the one with
/// `uid` (never a newer pod of the same name), with `grace_seconds` (the
/// pod's own when `None`), as a server-side dry run when `dry_run`.
pub async fn evict_pod(
    client: kube::Client,
    namespace: &str,
    name: &str,
    uid: &str,
    grace_seconds: Option<i64>,
    dry_run: bool,
) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let eviction = eviction(namespace, name, uid, grace_seconds, dry_run);
    let params = PostParams {
        dry_run,
        ..PostParams::default()
    };
    pods.create_subresource::<_, serde_json::Value>("eviction", name, &params, &eviction)
        .await
        .map(|_| ())
}

/// The Eviction object [`evict_pod`] sends. Pure.
pub fn eviction(
    namespace: &str,
    name: &str,
    uid: &str,
    grace_seconds: Option<i64>,
    dry_run: bool,
) -> Eviction {
    Eviction {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        delete_options: Some(DeleteOptions {
            grace_period_seconds: grace_seconds,
            dry_run: dry_run.then(|| vec!["All".to_owned()]),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteOptions::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uid_condition_is_where_the_api_server_reads_it() {
        let body = serde_json::to_value(eviction("ns", "p", "uid-1", Some(0), false)).unwrap();
        assert_eq!(body["deleteOptions"]["preconditions"]["uid"], "uid-1");
        assert_eq!(body["deleteOptions"]["gracePeriodSeconds"], 0);
        assert!(body.get("delete_options").is_none());
        let dry = serde_json::to_value(eviction("ns", "p", "uid-1", None, true)).unwrap();
        assert_eq!(dry["deleteOptions"]["dryRun"], serde_json::json!(["All"]));
        assert!(dry["deleteOptions"].get("gracePeriodSeconds").is_none());
    }
}
