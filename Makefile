# arc-watchdog: the two commands that matter are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help demo test lint fmt bench
help:
	@echo "make demo   - run the demo on a local control plane (no cluster needed)"
	@echo "make test   - run every test: unit, integration (real kube-apiserver) and end to end (real ARC)"
	@echo "make e2e-matrix - S2 and S3 on ARC 0.8.1, 0.9.2, 0.10.1 (and its legacy listener) and 0.14.2"
	@echo "make bench  - run the benchmarks"
	@echo "make lint   - cargo fmt --check and clippy -D warnings"
	@echo "make mutants - mutation testing of the pure core (two to three hours)"
	@echo "make image  - static binaries, checked in an empty root; the image too when buildah is installed"
	@echo "make chart  - the Helm chart as target/chart/arc-watchdog-<version>.tgz"
	@echo "make timeline - copy the last e2e run's S2 picture into docs/ (README)"

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

.PHONY: fuzz
# The review handler's cargo-fuzz target for 60 s (nightly + cargo-fuzz; not
# part of `make test`). New corpus entries go to fuzz/corpus/review.
fuzz:
	@mkdir -p fuzz/corpus/review
	cargo +nightly fuzz run review fuzz/corpus/review webhook/tests/golden/inputs -- -max_total_time=60

# Stages (Go tools, ARC, lint, build, unit, integration, e2e), each timed;
# the last line counts every test: `total: N passed, M failed`.
test:
	scripts/test.sh

# The demo: a local control plane (no cluster), arc-watchdog installed from
# manifests/, a conflict loop played through a fake node; cleans up after itself.
demo: go-tools
	cargo run -q -p arc-watchdog-tests --bin demo

.PHONY: chart
# The Helm chart as target/chart/arc-watchdog-<version>.tgz, linted first, with
# the helm `make go-tools` builds. Publish it with
# `helm push target/chart/arc-watchdog-<version>.tgz oci://REGISTRY/charts`.
HELM = $(shell ARC_WATCHDOG_PRINT_DIRS=1 tests/scripts/build-go-tools.sh helm | cut -d= -f2)/helm
chart:
	tests/scripts/build-go-tools.sh helm
	$(HELM) lint --strict charts/arc-watchdog
	$(HELM) package charts/arc-watchdog -d target/chart

.PHONY: go-tools test-integration
# etcd, kube-apiserver, kube-controller-manager, kubectl, promrules and helm built from their Go
# modules (tests/go/), cached in ~/.cache/arc-watchdog (ARC_WATCHDOG_CACHE).
go-tools:
	tests/scripts/build-go-tools.sh

# Only the integration tests (real kube-apiserver and etcd on 127.0.0.1).
test-integration: go-tools
	cargo test -p arc-watchdog-tests --test 'integration*'

.PHONY: mutants
# Mutation testing of the pure core (core crate, parser, detector, mutation,
# review handling) with cargo-mutants: two to three hours on 2 cores, not part of
# `make test`. MUTANTS_ARGS='--shard 0/8 --sharding round-robin' runs every 8th mutant.
# See scripts/mutants.sh.
mutants:
	scripts/mutants.sh

.PHONY: image
# Static musl binaries, checked in an empty root, and (with buildah) the
# image from Containerfile.package as target/image/arc-watchdog-<goarch>.tar
# (ARCH=aarch64 make image: arm64, cross-compiled). Multi-arch images for
# publishing: the Dockerfile with docker buildx.
image:
	scripts/image/build.sh

# Benchmarks (not part of `make test`): one line per figure,
# `bench <name>: <value> <unit> [ratio=<x> against <baseline>]`.
# Release builds are CPU heavy: niced. apiserver-cost, webhook-at-scale and
# sidecar-startup run the real kube-apiserver and etcd (and kubectl): go-tools.
# See README, section Performance.
bench: go-tools
	@mkdir -p target/bench
	nice cargo bench -p arc-watchdog-webhook --bench admission -- --noplot > target/bench/admission.log
	nice cargo build --release -p arc-watchdog -p arc-watchdog-webhook -p arc-watchdog-certs -p arc-watchdog-bench
	target/release/arc-watchdog-bench all

.PHONY: arc e2e e2e-matrix
# The real ARC controller and listeners (0.14.2 and 0.9.2; ARC=... for others)
# built from ARC's release sources (ARC_WATCHDOG_ARC_SOURCES, default
# ../shared/arc), checked against tests/arc/SOURCES, cached in
# ~/.cache/arc-watchdog (ARC_WATCHDOG_CACHE).
ARC ?= 0.14.2 0.9.2
arc:
	tests/scripts/build-arc.sh $(ARC)

# End to end against the real ARC (see README, section End to end): one line
# `scenario <id>: PASS|FAIL <numbers>` per scenario, report in
# target/e2e-report.md. E2E_SCENARIOS=S1,S2 runs a subset.
E2E_SCENARIOS ?= all
e2e: go-tools arc
	cargo build -p arc-watchdog-tests -p arc-watchdog -p arc-watchdog-webhook --bins
	target/debug/e2e --scenarios $(E2E_SCENARIOS)

# The README's picture of S2 (docs/e2e-s2.timeline.svg): taken from the last
# e2e run's S2 with the 10-minute stale session on 0.14.2 (its data and the
# SVG drawn from it; a unit test redraws the SVG from the data).
TIMELINE ?= target/S2-stale-session-600s-0.14.2.timeline
timeline:
	cp $(TIMELINE).json docs/e2e-s2.timeline.json
	cp $(TIMELINE).svg docs/e2e-s2.timeline.svg

# The version matrix: S2 (stale session, 2 and 10 minutes) and S3 (dead
# listener) on every pinned ARC version, S2 also with the legacy listener of
# 0.10.1. Report in target/e2e-matrix-report.md.
MATRIX := 0.8.1,0.9.2,0.10.1,0.14.2
e2e-matrix: go-tools
	tests/scripts/build-arc.sh 0.8.1 0.9.2 0.10.1 0.14.2
	cargo build -p arc-watchdog-tests -p arc-watchdog -p arc-watchdog-webhook --bins
	target/debug/e2e --scenarios S2,S3 --s2-versions $(MATRIX) --s2-legacy-versions 0.10.1 \
	  --s3-versions $(MATRIX) --report target/e2e-matrix-report.md
