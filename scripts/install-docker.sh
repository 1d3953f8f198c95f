#!/usr/bin/env bash
# Installs what the Docker tests need from Debian's packages, when missing: the engine (`docker.io`:
# dockerd, containerd, runc and the CLI), `busybox-static` (its binary goes into the images as the
# health probe's shell) and `docker-compose` (1.29, Debian's; it checks docker-compose.yml). Idempotent; prints nothing when everything is already there.
#
#   scripts/install-docker.sh
set -euo pipefail

installed() { [ "$(dpkg-query -W -f '${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
missing() {
  missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  installed busybox-static || missing+=(busybox-static)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  [ ${#missing[@]} -gt 0 ]
}
missing || exit 0
# Tests may ask at once: one installs, the others find it done.
exec 9>/tmp/efms-install-docker.lock
flock 9
missing || exit 0

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
