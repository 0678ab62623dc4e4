# syntax=docker/dockerfile:1.7
#
# One image holding all three arc-watchdog binaries: the webhook (entry
# point), the watchdog it injects, and the certificate helper. Static (musl),
# FROM scratch: no shell, no libc, no package manager; runs as 65532.
#
# Build and publish both architectures (users' CI; see README "Image"):
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -t REGISTRY/arc-watchdog:TAG --push .
# Each platform's builder stage runs on that platform (natively, or under
# QEMU/binfmt when buildx emulates it) and builds for its own musl target,
# with Debian's musl-tools as the C compiler for ring.
#
# This machine has no container engine: scripts/image/build.sh (make image)
# builds the same static binaries on the host and, when buildah is present,
# packages them with Containerfile.package.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eu; \
    target="$(uname -m)-unknown-linux-musl"; \
    rustup target add "$target"; \
    cargo build --release --locked --target "$target" \
      -p arc-watchdog-webhook -p arc-watchdog -p arc-watchdog-certs --bins; \
    mkdir -p /out; \
    for bin in arc-watchdog-webhook arc-watchdog arc-watchdog-certs; do \
      cp "target/$target/release/$bin" /out/; \
    done

FROM scratch
LABEL org.opencontainers.image.title="arc-watchdog" \
      org.opencontainers.image.description="Keeps GitHub Actions Runner Controller scale-set listeners alive" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/arc-watchdog-webhook /out/arc-watchdog /out/arc-watchdog-certs /
USER 65532:65532
ENTRYPOINT ["/arc-watchdog-webhook"]
