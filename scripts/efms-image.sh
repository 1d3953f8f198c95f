#!/usr/bin/env bash
# Builds the efms image with no registry: FROM scratch, holding an `efms` binary, the shared
# libraries `ldd` lists for it, and nothing else but busybox (Debian's busybox-static). It runs
# `efms serve` as an unprivileged user (uid 10001) and checks its own health with `efms probe`.
# The image is saved to .tools/docker/efms/efms.tar (beside its tag, id and cache key) and
# rebuilt only when what goes into it changes; load it with `docker load --input` wherever it
# runs.
#
#   scripts/efms-image.sh                  # a release build of this checkout; prints the tag
#   scripts/efms-image.sh path/to/efms     # the given binary (the tests give their debug build)
#
# The image's settings come from its environment as for any `efms serve` (README): it listens on
# 0.0.0.0:8080 (HTTP) and 0.0.0.0:18000 (gRPC) unless told otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/scratch-image.sh
. scripts/lib/scratch-image.sh
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
TAG="efms/efms:$VERSION"
OUT=.tools/docker/efms
WORK=.tools/docker/build/efms

if [ $# -ge 1 ]; then
  binary=$(realpath "$1")
else
  SQLX_OFFLINE=true cargo build --quiet --release --locked --bin efms
  binary="${CARGO_TARGET_DIR:-$PWD/target}/release/efms"
fi
[ -x "$binary" ] || { echo "efms-image.sh: no efms binary at $binary" >&2; exit 1; }

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
scripts/install-docker.sh
scratch_require_busybox

dockerfile() {
  cat <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/bin EFMS_HTTP_ADDR=0.0.0.0:8080 EFMS_GRPC_ADDR=0.0.0.0:18000
USER 10001:10001
EXPOSE 8080 18000
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=3 CMD ["/usr/local/bin/efms", "probe"]
ENTRYPOINT ["/usr/local/bin/efms"]
CMD ["serve"]
DOCKERFILE
}

key=$(scratch_files "$binary" /usr/local/bin/efms | scratch_key "$(dockerfile)" "$TAG")
tar="$OUT/efms.tar"
if [ -f "$tar" ] && [ "$(cat "$OUT/efms.key" 2>/dev/null)" = "$key" ]; then
  echo "$TAG"
  exit 0
fi

scratch_files "$binary" /usr/local/bin/efms | scratch_rootfs "$WORK" efms 10001
chmod 755 "$WORK/rootfs/usr/local/bin/efms"
dockerfile >"$WORK/Dockerfile"
scratch_build "$WORK" "$TAG" "$tar" "$key" "$TAG --version"
echo "$TAG"
