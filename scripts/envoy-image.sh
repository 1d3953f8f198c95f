#!/usr/bin/env bash
# Builds the Envoy image the Docker tests run, with no registry: FROM scratch, holding the Envoy
# binary scripts/install-envoy.sh installs, the shared libraries `ldd` lists for it, and busybox
# (from Debian's busybox-static) for the health probe. The image is saved once to
# .tools/docker/images/envoy-VERSION.tar, beside its tag (.tag) and image id (.id), and rebuilt only
# when what goes into it changes; scripts/dockerd.sh loads it into every engine it starts.
#
#   scripts/envoy-image.sh            # Envoy 1.40.0; prints the image's tag
#   scripts/envoy-image.sh 1.36.4     # another version installs.sh can install
#
# The image: entrypoint envoy, health probe GET 127.0.0.1:$ENVOY_ADMIN_PORT/ready (default 9901)
# every 2 s. Envoy containers sharing the host's network need --disable-hot-restart (or distinct
# --base-id) and ports of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/scratch-image.sh
. scripts/lib/scratch-image.sh
VERSION=${1:-1.40.0}
TAG="efms-test/envoy:$VERSION"
OUT=.tools/docker/images
WORK=.tools/docker/build/envoy-$VERSION

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
scripts/install-docker.sh
envoy=$(scripts/install-envoy.sh "$VERSION")
scratch_require_busybox

dockerfile() {
  cat <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/bin ENVOY_ADMIN_PORT=9901
USER 0
HEALTHCHECK --interval=2s --timeout=3s --start-period=10s --retries=3 CMD ["/usr/local/bin/healthcheck"]
ENTRYPOINT ["/usr/local/bin/envoy"]
CMD ["--version"]
DOCKERFILE
}

# No `wget -T`: Debian's static busybox 1.35 crashes with it; the health check's own timeout
# ends a probe that hangs.
healthcheck() {
  printf '#!/bin/sh\nexec wget -q -O /dev/null "http://127.0.0.1:${ENVOY_ADMIN_PORT:-9901}/ready"\n'
}

key=$(scratch_files "$envoy" /usr/local/bin/envoy | scratch_key "$(dockerfile)" "$(healthcheck)" "$TAG")
tar="$OUT/envoy-$VERSION.tar"
if [ -f "$tar" ] && [ "$(cat "$OUT/envoy-$VERSION.key" 2>/dev/null)" = "$key" ]; then
  echo "$TAG"
  exit 0
fi

scratch_files "$envoy" /usr/local/bin/envoy | scratch_rootfs "$WORK" envoy 101
healthcheck >"$WORK/rootfs/usr/local/bin/healthcheck"
chmod 755 "$WORK/rootfs/usr/local/bin/healthcheck" "$WORK/rootfs/usr/local/bin/envoy"
dockerfile >"$WORK/Dockerfile"
scratch_build "$WORK" "$TAG" "$tar" "$key" "--entrypoint /usr/local/bin/envoy $TAG --version"
echo "$TAG"
