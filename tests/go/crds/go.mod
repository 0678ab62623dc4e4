// Pins the modules whose CRDs the integration tests install (read from the
// module cache by tests/src/control_plane.rs; nothing is built from them):
// ARC gha-runner-scale-set-0.14.2 (config/crd/bases) and cert-manager
// (deploy/crds).
module arc-watchdog.invalid/tests/go/crds

go 1.24.0

require (
	github.com/actions/actions-runner-controller v0.27.7-0.20260522100713-9bb16ae49d0c
	github.com/cert-manager/cert-manager v1.21.2
)
