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
VERSION=${1:-1.40.0}
TAG="efms-test/envoy:$VERSION"
OUT=.tools/docker/images
WORK=.tools/docker/build/envoy-$VERSION
BUILD_ENGINE=image-build

die() { echo "envoy-image.sh: $*" >&2; exit 1; }

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
scripts/install-docker.sh
envoy=$(scripts/install-envoy.sh "$VERSION")
busybox=/bin/busybox
ldd "$busybox" >/dev/null 2>&1 && die "$busybox is not static: install busybox-static"

# Every file of the image: "source destination". ldd prints the libraries the dynamic loader will
# map and the loader itself; glibc also opens libgcc_s at run time (thread cancellation, unwinding).
files() {
  echo "$envoy /usr/local/bin/envoy"
  echo "$busybox /bin/busybox"
  ldd "$envoy" | grep -o '/[^ ]*' | sort -u | while read -r lib; do echo "$lib $lib"; done
  local gcc
  # awk reads to the end: leaving early would kill ldconfig with SIGPIPE, which pipefail reports.
  gcc=$(ldconfig -p | awk '/libgcc_s.so.1 .*x86-64|libgcc_s.so.1 .*aarch64/ && !found {found = $NF} END {print found}')
  [ -n "$gcc" ] && echo "$gcc $gcc"
  return 0
}

dockerfile() {
  cat <<'EOF'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/bin ENVOY_ADMIN_PORT=9901
USER 0
HEALTHCHECK --interval=2s --timeout=3s --start-period=10s --retries=3 CMD ["/usr/local/bin/healthcheck"]
ENTRYPOINT ["/usr/local/bin/envoy"]
CMD ["--version"]
EOF
}

# No `wget -T`: Debian's static busybox 1.35 crashes with it; the health check's own timeout
# ends a probe that hangs.
healthcheck() {
  printf '#!/bin/sh\nexec wget -q -O /dev/null "http://127.0.0.1:${ENVOY_ADMIN_PORT:-9901}/ready"\n'
}

# The cache key: what every file holds and where it goes, and the recipe around them.
key=$({
  files | while read -r src dst; do echo "$(sha256sum <"$src" | cut -c1-64) $dst"; done
  dockerfile
  healthcheck
  echo "$TAG"
} | sha256sum | cut -c1-64)

tar="$OUT/envoy-$VERSION.tar"
if [ -f "$tar" ] && [ "$(cat "$OUT/envoy-$VERSION.key" 2>/dev/null)" = "$key" ]; then
  echo "$TAG"
  exit 0
fi

rm -rf "$WORK"
mkdir -p "$WORK/rootfs"/{bin,etc,tmp,proc,sys,dev,usr/local/bin}
chmod 1777 "$WORK/rootfs/tmp"
files | while read -r src dst; do
  mkdir -p "$WORK/rootfs$(dirname "$dst")"
  cp -L "$src" "$WORK/rootfs$dst"
done
for applet in sh wget cat ls ps sleep kill; do ln -s busybox "$WORK/rootfs/bin/$applet"; done
healthcheck >"$WORK/rootfs/usr/local/bin/healthcheck"
chmod 755 "$WORK/rootfs/usr/local/bin/healthcheck" "$WORK/rootfs/usr/local/bin/envoy"
printf 'root:x:0:0:root:/:/bin/sh\nenvoy:x:101:101::/:/bin/false\n' >"$WORK/rootfs/etc/passwd"
printf 'root:x:0:\nenvoy:x:101:\n' >"$WORK/rootfs/etc/group"
dockerfile >"$WORK/Dockerfile"

host=$(scripts/dockerd.sh start "$BUILD_ENGINE")
trap 'scripts/dockerd.sh stop "$BUILD_ENGINE"' EXIT
DOCKER=$(command -v /usr/bin/docker || command -v docker)
export DOCKER_HOST=$host DOCKER_BUILDKIT=0
# The legacy builder warns that it is deprecated: BuildKit is not packaged with Debian's engine.
"$DOCKER" build --quiet --tag "$TAG" "$WORK" >/dev/null 2>"$WORK/build.log" || { cat "$WORK/build.log" >&2; exit 1; }
"$DOCKER" run --rm --entrypoint /usr/local/bin/envoy "$TAG" --version >/dev/null \
  || die "the image's Envoy does not run"
"$DOCKER" save --output "$tar.tmp" "$TAG"
mv "$tar.tmp" "$tar"
echo "$TAG" >"$OUT/envoy-$VERSION.tag"
"$DOCKER" image inspect --format '{{.Id}}' "$TAG" >"$OUT/envoy-$VERSION.id"
echo "$key" >"$OUT/envoy-$VERSION.key"
rm -rf "$WORK"
echo "$TAG"
