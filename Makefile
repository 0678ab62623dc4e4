# arc-watchdog: the two commands that matter are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help demo test lint fmt bench
help:
	@echo "make demo   - run the demo on a local control plane (no cluster needed)"
	@echo "make test   - run every test: unit, integration (real kube-apiserver) and end to end (real ARC)"
	@echo "make bench  - run the benchmarks"
	@echo "make lint   - cargo fmt --check and clippy -D warnings"
	@echo "make image  - static binaries, checked in an empty root; the image too when buildah is installed"

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

test: go-tools
	cargo test --workspace --all-targets

.PHONY: go-tools test-integration
# etcd, kube-apiserver, kube-controller-manager and kubectl built from their Go
# modules (tests/go/), cached in ~/.cache/arc-watchdog (ARC_WATCHDOG_CACHE).
go-tools:
	tests/scripts/build-go-tools.sh

# Only the integration tests (real kube-apiserver and etcd on 127.0.0.1).
test-integration: go-tools
	cargo test -p arc-watchdog-tests --test 'integration*'

.PHONY: image
# Static musl binaries, checked in an empty root, and (with buildah) the
# image from Containerfile.package as target/image/arc-watchdog.tar.
# Multi-arch images for publishing: the Dockerfile with docker buildx.
image:
	scripts/image/build.sh
