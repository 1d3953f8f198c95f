#!/usr/bin/env bash
# Installs what the Docker tests need from Debian's packages, when missing: the engine (`docker.io`:
# dockerd, containerd, runc and the CLI) and `busybox-static` (its binary goes into the Envoy test
# image as the health probe). Idempotent; prints nothing when everything is already there.
#
#   scripts/install-docker.sh
set -euo pipefail

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
[ -x /bin/busybox ] || missing+=(busybox-static)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "install-docker.sh: ${missing[*]} missing and installing needs root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt_install() {
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
# A fresh machine's package lists may be empty or stale: refresh them once, only when needed.
if ! apt_install 2>/dev/null; then
  apt-get update -qq >/dev/null
  apt_install
fi
command -v dockerd >/dev/null
