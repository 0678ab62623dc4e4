//! Test support for arc-watchdog: the local control plane (real
//! kube-apiserver and etcd), the fake GitHub Actions service and the
//! process kubelet; and the Helm chart's rendering and comparison with the
//! kustomize install.

pub mod chart;
pub mod control_plane;
pub mod fake_github;
pub mod kubelet;
pub mod node;
pub mod per_listener;
pub mod timeline;
