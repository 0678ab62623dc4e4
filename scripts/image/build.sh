#!/usr/bin/env bash
# make image: build the arc-watchdog image without a container engine.
#
# 1. Builds the three binaries as static musl executables on the host
#    (release profile, target <arch>-unknown-linux-musl), with the same recipe
#    as the Dockerfile's builder stage: Debian's musl-tools for the host's own
#    architecture; for the other one (ARCH=aarch64 on an x86_64 host),
#    Debian's <arch>-linux-gnu-gcc as C compiler and linker.
# 2. Proves they are static: `file` says statically linked, `ldd` finds no
#    dynamic dependencies.
# 3. Runs each one in an empty root (a directory holding only that binary,
#    entered with chroot as 65532:65532; for a foreign architecture plus the
#    static qemu-<arch>-static from Debian's qemu-user-static): `--help` and
#    `--version` must work with no shell, libc or /etc.
# 4. Runs arc-watchdog-certs and then the webhook in an empty root (only the
#    two binaries and a writable /certs) and checks that it gets ready,
#    answers HTTPS with the generated CA, and exports the certificate's
#    expiry.
# 5. If buildah is installed: builds the image from Containerfile.package
#    (FROM scratch, USER 65532:65532) for that architecture, checks its user,
#    entry point and contents, runs the binaries inside it (host architecture
#    only), checks that it has no shell, and exports it as an OCI archive.
#
# Steps 3 to 5 need root (chroot, buildah's vfs storage); step 4 needs curl.
# Output: target/image/<arch>/ (binaries), target/image/arc-watchdog-<goarch>.tar.
# Env: ARCH (x86_64 or aarch64; default the host's), IMAGE (default
# arc-watchdog:dev-<goarch>), NICE (default 10), SKIP_BUILD=1 (reuse the
# binaries already in target/image/<arch>).
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

HOST_ARCH="$(uname -m)"
ARCH="${ARCH:-$HOST_ARCH}"
case "$ARCH" in
  x86_64) GOARCH=amd64 ;;
  aarch64) GOARCH=arm64 ;;
  *) die "unsupported ARCH $ARCH (x86_64 or aarch64)" ;;
esac
IMAGE="${IMAGE:-arc-watchdog:dev-$GOARCH}"
NICE="${NICE:-10}"
BINS=(arc-watchdog-webhook arc-watchdog arc-watchdog-certs)
TARGET="${ARCH}-unknown-linux-musl"
OUT="target/image/${ARCH}"
ARCHIVE="target/image/arc-watchdog-${GOARCH}.tar"

# How to run a binary of $ARCH inside an empty root: directly on the host's
# own architecture, else through a static qemu copied into that root.
EMU=()
if [ "$ARCH" != "$HOST_ARCH" ]; then
  qemu="$(command -v "qemu-${ARCH}-static" || true)"
  [ -n "$qemu" ] || die "qemu-${ARCH}-static not found: apt-get install -y qemu-user-static"
  EMU=(/qemu)
fi
# Makes an empty root holding the given files (and qemu when needed).
empty_root() {
  local root
  root="$(mktemp -d)"
  chmod 0755 "$root"
  cp "$@" "$root/"
  [ ${#EMU[@]} -eq 0 ] || cp "$qemu" "$root/qemu"
  printf '%s' "$root"
}

rustup target list --installed | grep -qx "$TARGET" ||
  die "rust target $TARGET missing: rustup target add $TARGET"

if [ "${SKIP_BUILD:-0}" = 1 ] && [ -x "$OUT/arc-watchdog-webhook" ]; then
  log "SKIP_BUILD=1: reusing the binaries in $OUT"
else
  if [ "$ARCH" = "$HOST_ARCH" ]; then
    command -v musl-gcc >/dev/null || die "musl-gcc not found: apt-get install -y musl-tools"
  else
    cc="${ARCH}-linux-gnu-gcc"
    command -v "$cc" >/dev/null ||
      die "$cc not found: apt-get install -y gcc-${ARCH//_/-}-linux-gnu libc6-dev-${GOARCH}-cross"
    export "CC_${TARGET//-/_}=$cc"
    upper="${TARGET//-/_}"
    export "CARGO_TARGET_${upper^^}_LINKER=$cc"
  fi
  log "building ${BINS[*]} for $TARGET (release, static)"
  nice -n "$NICE" cargo build --release --locked --target "$TARGET" \
    -p arc-watchdog-webhook -p arc-watchdog -p arc-watchdog-certs --bins
  rm -rf "$OUT" && mkdir -p "$OUT"
  for bin in "${BINS[@]}"; do
    cp "target/$TARGET/release/$bin" "$OUT/$bin"
  done
fi

log "checking that the binaries are static"
for bin in "${BINS[@]}"; do
  desc="$(file -b "$OUT/$bin")"
  printf '    %s: %s\n' "$bin" "$desc"
  case "$desc" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) die "$bin is not statically linked" ;;
  esac
  case "$ARCH:$desc" in
    x86_64:*x86-64* | aarch64:*aarch64* | aarch64:*"ARM aarch64"*) ;;
    *) die "$bin is not built for $ARCH" ;;
  esac
  if ldd "$OUT/$bin" 2>&1 | grep -q '=>'; then
    die "$bin has dynamic dependencies: $(ldd "$OUT/$bin" 2>&1)"
  fi
done

[ "$(id -u)" = 0 ] || { log "not root: skipping the empty-root and image checks"; exit 0; }

log "running each binary in an empty root${EMU:+ (through qemu-${ARCH}-static)}"
for bin in "${BINS[@]}"; do
  root="$(empty_root "$OUT/$bin")"
  for arg in --help --version; do
    if ! output="$(chroot --userspec=65532:65532 "$root" "${EMU[@]}" "/$bin" "$arg" 2>&1)"; then
      rm -rf "$root"
      die "$bin $arg failed in an empty root: $output"
    fi
    printf '    %s %s: %s\n' "$bin" "$arg" "$(printf '%s' "$output" | head -n 1)"
  done
  rm -rf "$root"
done

if command -v curl >/dev/null; then
  log "serving from an empty root: certificates from arc-watchdog-certs, then the webhook"
  # Only the two binaries and a writable /certs: proves the webhook needs no
  # /etc, /tmp, CA bundle or shell to serve TLS and its admin port.
  root="$(empty_root "$OUT/arc-watchdog-certs" "$OUT/arc-watchdog-webhook")"
  mkdir "$root/certs" && chown 65532:65532 "$root/certs"
  chroot --userspec=65532:65532 "$root" "${EMU[@]}" /arc-watchdog-certs --out /certs --ip 127.0.0.1 >/dev/null
  https_port=$((20000 + RANDOM % 20000))
  admin_port=$((https_port + 1))
  chroot --userspec=65532:65532 "$root" "${EMU[@]}" /arc-watchdog-webhook \
    --watchdog-image=arc-watchdog:dev --manage-rbac=false --sidecar-mode=native \
    --listen="127.0.0.1:$https_port" --admin-listen="127.0.0.1:$admin_port" \
    --tls-cert=/certs/tls.crt --tls-key=/certs/tls.key >"$root/webhook.log" 2>&1 &
  webhook_pid=$!
  ready=""
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.2
  done
  # Any HTTP answer (an empty review gets a 4xx) proves the TLS handshake
  # against the generated CA; curl prints 000 when there was none.
  code="000"
  if [ -n "$ready" ]; then
    code="$(curl -sS --cacert "$root/certs/ca.crt" -o /dev/null -w '%{http_code}' \
      -X POST -H 'Content-Type: application/json' --data '{}' \
      "https://127.0.0.1:$https_port/mutate" 2>/dev/null || true)"
  fi
  expiry="$(curl -fsS "http://127.0.0.1:$admin_port/metrics" 2>/dev/null |
    grep '^arc_watchdog_webhook_certificate_expiry_timestamp_seconds' || true)"
  kill "$webhook_pid" 2>/dev/null || true
  wait "$webhook_pid" 2>/dev/null || true
  if [ -z "$ready" ]; then
    cat "$root/webhook.log" >&2
    rm -rf "$root"
    die "the webhook never became ready in an empty root"
  fi
  rm -rf "$root"
  [ "$code" != "000" ] || die "the webhook did not answer HTTPS with the generated certificate"
  printf '    ready; POST /mutate over TLS (generated CA) answered HTTP %s; %s\n' "$code" "$expiry"
fi

if ! command -v buildah >/dev/null; then
  log "buildah not installed: binaries are in $OUT; the image itself is built by the Dockerfile in CI"
  exit 0
fi

log "building $IMAGE (linux/$GOARCH) with buildah (Containerfile.package)"
B=(buildah --storage-driver vfs)
"${B[@]}" bud --isolation chroot --layers=false --platform "linux/$GOARCH" \
  -f Containerfile.package -t "$IMAGE" "$OUT"

user="$("${B[@]}" inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")"
entry="$("${B[@]}" inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$IMAGE")"
arch="$("${B[@]}" inspect --type image --format '{{.OCIv1.Architecture}}' "$IMAGE")"
printf '    architecture: %s, user: %s, entrypoint: %s\n' "$arch" "$user" "$entry"
[ "$arch" = "$GOARCH" ] || die "image architecture is $arch, want $GOARCH"
[ "$user" = "65532:65532" ] || die "image user is $user, want 65532:65532"
[ "$entry" = "[/arc-watchdog-webhook]" ] || die "image entry point is $entry"

ctr="arc-watchdog-image-check-$$"
trap '"${B[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
"${B[@]}" from --name "$ctr" "$IMAGE" >/dev/null
mnt="$("${B[@]}" mount "$ctr")"
contents="$(cd "$mnt" && find . -mindepth 1 | sort | tr '\n' ' ')"
"${B[@]}" umount "$ctr" >/dev/null
printf '    image root holds: %s\n' "$contents"
[ "$contents" = "./arc-watchdog ./arc-watchdog-certs ./arc-watchdog-webhook " ] ||
  die "unexpected image contents: $contents"
if [ "$ARCH" = "$HOST_ARCH" ]; then
  for bin in "${BINS[@]}"; do
    v="$("${B[@]}" run --isolation chroot "$ctr" -- "/$bin" --version)"
    printf '    in image: /%s --version: %s\n' "$bin" "$v"
  done
  if "${B[@]}" run --isolation chroot "$ctr" -- /bin/sh -c true >/dev/null 2>&1; then
    die "the image has a shell"
  fi
  printf '    no /bin/sh in the image (as intended)\n'
else
  printf '    (foreign architecture: the binaries ran through qemu above, not inside the image)\n'
fi

mkdir -p target/image
rm -f "$ARCHIVE"
"${B[@]}" push "$IMAGE" "oci-archive:$ARCHIVE"
log "image $IMAGE exported to $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
# Earlier builds' layers, now untagged.
"${B[@]}" rmi --prune >/dev/null 2>&1 || true
