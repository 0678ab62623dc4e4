//! The JSON patch the webhook answers with, as typed operations.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use serde::Serialize;

/// A JSON patch (RFC 6902) as the webhook builds it: only `add`
/// operations, each value kept as the typed object it adds and serialised
/// straight to JSON. A `serde_json::Value` tree of the same patch costs more
/// than the rest of a review together (building it, writing it, dropping
/// it), for the same bytes: a typed Kubernetes object writes its fields in
/// the sorted order a `Value` map has.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Patch(pub Vec<PatchOperation>);

/// One operation of a [`Patch`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum PatchOperation {
    /// Adds `value` at `path`.
    Add {
        /// JSON pointer (RFC 6901) of the target.
        path: String,
        /// What is added there.
        value: PatchValue,
    },
}

/// What an `add` of a [`Patch`] adds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PatchValue {
    /// One container, into an existing list.
    Container(Box<Container>),
    /// A whole list of containers, where the pod has none.
    Containers(Vec<Container>),
    /// One volume, into an existing list.
    Volume(Box<Volume>),
    /// A whole list of volumes, where the pod has none.
    Volumes(Vec<Volume>),
    /// One annotation's value, into an existing map.
    String(String),
    /// A whole annotations map, where the pod has none.
    Annotations(BTreeMap<String, String>),
}

/// Adds one annotation: into the existing map, or the map itself when the
/// pod has none (a JSON patch cannot add a key to a missing object).
pub(super) fn add_annotation(pod: &Pod, key: &str, value: String) -> PatchOperation {
    if pod.metadata.annotations.is_some() {
        add(
            pointer(&["metadata", "annotations", key]),
            PatchValue::String(value),
        )
    } else {
        add(
            pointer(&["metadata", "annotations"]),
            PatchValue::Annotations(BTreeMap::from([(key.to_owned(), value)])),
        )
    }
}

pub(super) fn add(path: String, value: PatchValue) -> PatchOperation {
    PatchOperation::Add { path, value }
}

/// The JSON pointer (RFC 6901) of `tokens`: `~` and `/` escaped.
pub(super) fn pointer(tokens: &[&str]) -> String {
    let mut path = String::new();
    for token in tokens {
        path.push('/');
        for c in token.chars() {
            match c {
                '~' => path.push_str("~0"),
                '/' => path.push_str("~1"),
                c => path.push(c),
            }
        }
    }
    path
}
