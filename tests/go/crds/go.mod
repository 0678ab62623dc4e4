// Pins the modules whose CRDs the integration tests install (read from the
// module cache by tests/src/control_plane.rs; nothing is built from them):
// ARC (config/crd/bases), cert-manager (deploy/crds) and the Prometheus
// Operator (example/prometheus-operator-crd: PodMonitor, PrometheusRule for
// manifests/monitoring; v0.85.0 is the newest version the proxy serves).
//
// ARC is pinned to v0.27.6, the newest ARC version the Go module proxy
// serves: it refuses the pseudo-versions of the gha-runner-scale-set-*
// release commits (403 "This module version is not available"). Its
// actions.github.com/v1alpha1 CRDs are the scale-set mode's (0.6 era);
// the integration tests only need the AutoscalingListener kind and its
// schema's basics. The end-to-end tests use the CRDs of the ARC version
// they run (tests/go/arc-*).
module arc-watchdog.invalid/tests/go/crds

go 1.24.0

require (
	github.com/actions/actions-runner-controller v0.27.6
	github.com/cert-manager/cert-manager v1.21.2
	github.com/prometheus-operator/prometheus-operator v0.85.0
)
