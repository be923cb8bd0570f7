#!/usr/bin/env bash
# Build the CPU image from deploy/docker/Dockerfile without pulling anything from a registry, then smoke-check it:
#   1. a Debian bookworm minbase root file system (debootstrap, Debian mirror), imported into podman as the base image
#      (cached: made once per machine);
#   2. podman build --isolation=chroot with VARIANT=cpu and that base;
#   3. buildah run --isolation=chroot: `cola --version` and `cola demo` inside the image (running containers needs
#      crun, which cannot set rlimits on these machines).
# Usage (as root, from anywhere):  deploy/build_image.sh [TAG]        default TAG: cola-moderation:<version>-cpu
# Environment: MIRROR (http://deb.debian.org/debian), CACHE (~/.cache/cola-moderation: the root fs),
#   WHEELS (/opt/wheels: a local directory holding the CPU torch wheel, used when present), CA_BUNDLE (the host's CA
#   bundle, handed to pip in the build when present: needed behind a TLS-intercepting proxy).
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' cola_moderation/__init__.py)
tag=${1:-cola-moderation:$version-cpu}
base=localhost/cola-base:bookworm-minbase
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CACHE=${CACHE:-$HOME/.cache/cola-moderation}
WHEELS=${WHEELS:-/opt/wheels}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
say() { printf '[build_image %4ds] %s\n' "$(( $(date +%s) - started ))" "$*" >&2; }

missing=()
for tool in debootstrap podman buildah; do command -v "$tool" > /dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt)"
  apt-get install -y -q "${missing[@]}" > /dev/null || { apt-get update -q > /dev/null && apt-get install -y -q "${missing[@]}" > /dev/null; }
fi

if ! podman image exists "$base"; then
  rootfs=$CACHE/rootfs-bookworm
  if [ ! -x "$rootfs/usr/bin/apt-get" ]; then
    say "debootstrap --variant=minbase bookworm $rootfs $MIRROR"
    mkdir -p "$CACHE"
    debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" > "$CACHE/debootstrap.log"
  fi
  say "podman import $rootfs as $base"
  tar -C "$rootfs" -c . | podman import - "$base" > /dev/null
fi

args=(--build-arg VARIANT=cpu --build-arg CPU_IMAGE="$base")
torch_wheel=$(ls "$WHEELS"/torch-*+cpu-cp311-*.whl 2> /dev/null | head -n 1 || true)
if [ -n "$torch_wheel" ]; then  # the local CPU wheel instead of PyTorch's index
  torch_version=$(basename "$torch_wheel" | cut -d- -f2)
  args+=(--volume "$WHEELS:/build/wheels:ro" --build-arg PIP_FIND_LINKS=/build/wheels
         --build-arg TORCH_SPEC="torch==$torch_version" --build-arg TORCH_INDEX_URL=https://pypi.org/simple)
fi
if [ -f "$CA_BUNDLE" ]; then
  args+=(--volume "$CA_BUNDLE:/build/ca.crt:ro" --build-arg PIP_CERT=/build/ca.crt)
fi
say "podman build --isolation=chroot -t $tag (${torch_wheel:-torch from the PyTorch CPU index})"
podman build --isolation=chroot -f deploy/docker/Dockerfile "${args[@]}" -t "$tag" .
built=$(date +%s)

say "smoke check (buildah run --isolation=chroot)"
# the host's open-file limit (chroot isolation otherwise gives 1024, which Ray warns about)
nofile=$(ulimit -Hn)
container=$(buildah from --pull-never --ulimit "nofile=$nofile:$nofile" "$tag")
trap 'buildah rm "$container" > /dev/null' EXIT
buildah run --isolation=chroot "$container" -- cola --version
buildah run --isolation=chroot "$container" -- cola demo

size=$(podman image inspect --format '{{.Size}}' "$tag")
say "done: $tag, $(( size / 1000000 )) MB, build $(( built - started )) s, total $(( $(date +%s) - started )) s"
