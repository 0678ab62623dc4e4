# syntax=docker/dockerfile:1.7
#
# One image holding all three arc-watchdog binaries: the webhook (entry
# point), the watchdog it injects, and the certificate helper. Static (musl),
# FROM scratch: no shell, no libc, no package manager; runs as 65532.
#
# Build and publish both architectures (users' CI; see README "Image"):
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -t REGISTRY/arc-watchdog:TAG --push .
# The builder stage runs on the build machine's own platform and
# cross-compiles for each TARGETARCH (no emulation): Debian's musl-tools for
# the native target, Debian's <arch>-linux-gnu-gcc as C compiler (ring) and
# linker for the other one. scripts/image/build.sh follows the same recipe on
# a host without a container engine (make image; ARCH=aarch64 make image).

ARG RUST_VERSION=1.95

FROM --platform=$BUILDPLATFORM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
ARG TARGETARCH
WORKDIR /src
RUN set -eu; \
    case "$TARGETARCH" in \
      amd64) arch=x86_64 ;; \
      arm64) arch=aarch64 ;; \
      *) echo "unsupported TARGETARCH $TARGETARCH" >&2; exit 1 ;; \
    esac; \
    if [ "$arch" = "$(uname -m)" ]; then pkgs=musl-tools; \
    else pkgs="gcc-$(echo "$arch" | tr _ -)-linux-gnu libc6-dev-$( [ "$arch" = aarch64 ] && echo arm64 || echo amd64 )-cross"; fi; \
    apt-get update; \
    apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/*; \
    rustup target add "$arch-unknown-linux-musl"; \
    echo "$arch" > /arch
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eu; \
    arch="$(cat /arch)"; \
    target="$arch-unknown-linux-musl"; \
    if [ "$arch" != "$(uname -m)" ]; then \
      upper="$(echo "$target" | tr a-z- A-Z_)"; \
      export "CC_$(echo "$target" | tr - _)=$arch-linux-gnu-gcc"; \
      export "CARGO_TARGET_${upper}_LINKER=$arch-linux-gnu-gcc"; \
    fi; \
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
