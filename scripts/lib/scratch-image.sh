# Shared by the scripts that build images with no registry (scripts/envoy-image.sh,
# scripts/efms-image.sh): an image FROM scratch holding a binary, the shared libraries the
# dynamic loader maps for it, and busybox (Debian's busybox-static) for a health probe. Sourced,
# not run; the caller is in the checkout's root.

# Lines "source destination" for BINARY (installed as DEST) and every library it needs: ldd lists
# what the loader maps and the loader itself; glibc also opens libgcc_s at run time (thread
# cancellation, unwinding).
scratch_files() {
  local binary=$1 dest=$2 gcc
  echo "$binary $dest"
  echo "/bin/busybox /bin/busybox"
  ldd "$binary" | grep -o '/[^ ]*' | sort -u | while read -r lib; do echo "$lib $lib"; done
  # awk reads to the end: leaving early would kill ldconfig with SIGPIPE, which pipefail reports.
  gcc=$(ldconfig -p | awk '/libgcc_s.so.1 .*x86-64|libgcc_s.so.1 .*aarch64/ && !found {found = $NF} END {print found}')
  [ -n "$gcc" ] && echo "$gcc $gcc"
  return 0
}

# Fails unless busybox is static: it goes into the image without its libraries.
scratch_require_busybox() {
  if ldd /bin/busybox >/dev/null 2>&1; then
    echo "/bin/busybox is not static: install busybox-static" >&2
    return 1
  fi
}

# The cache key of an image: what each "source destination" line of stdin holds and where it
# goes, then the text of every further argument (the recipe around the files).
scratch_key() {
  {
    while read -r src dst; do echo "$(sha256sum <"$src" | cut -c1-64) $dst"; done
    printf '%s\n' "$@"
  } | sha256sum | cut -c1-64
}

# Lays out WORK/rootfs from the "source destination" lines of stdin, with /tmp, /proc, /sys,
# /dev, the busybox applets the probes use, and a passwd and group of root and USER:UID.
scratch_rootfs() {
  local work=$1 user=$2 uid=$3 src dst applet
  rm -rf "$work"
  mkdir -p "$work/rootfs"/{bin,etc,tmp,proc,sys,dev,usr/local/bin}
  chmod 1777 "$work/rootfs/tmp"
  while read -r src dst; do
    mkdir -p "$work/rootfs$(dirname "$dst")"
    cp -L "$src" "$work/rootfs$dst"
  done
  for applet in sh wget cat ls ps sleep kill; do ln -s busybox "$work/rootfs/bin/$applet"; done
  printf 'root:x:0:0:root:/:/bin/sh\n%s:x:%s:%s::/:/bin/false\n' "$user" "$uid" "$uid" >"$work/rootfs/etc/passwd"
  printf 'root:x:0:\n%s:x:%s:\n' "$user" "$uid" >"$work/rootfs/etc/group"
}

# Builds WORK (its Dockerfile and rootfs) as TAG on the image-building engine, runs CHECK (a
# command line run in the image, which must succeed), and saves the image to TAR beside its tag
# (.tag), id (.id) and KEY (.key).
scratch_build() {
  local work=$1 tag=$2 tar=$3 key=$4 check=$5 docker host
  host=$(scripts/dockerd.sh start image-build)
  docker=$(command -v /usr/bin/docker || command -v docker)
  # The legacy builder warns that it is deprecated: BuildKit is not packaged with Debian's engine.
  DOCKER_HOST=$host DOCKER_BUILDKIT=0 "$docker" build --quiet --tag "$tag" "$work" >/dev/null \
    2>"$work/build.log" || { cat "$work/build.log" >&2; scripts/dockerd.sh stop image-build; return 1; }
  # shellcheck disable=SC2086 # CHECK is a command line.
  if ! DOCKER_HOST=$host "$docker" run --rm $check >/dev/null; then
    echo "the image $tag does not run: $check" >&2
    scripts/dockerd.sh stop image-build
    return 1
  fi
  DOCKER_HOST=$host "$docker" save --output "$tar.tmp" "$tag"
  mv "$tar.tmp" "$tar"
  echo "$tag" >"${tar%.tar}.tag"
  DOCKER_HOST=$host "$docker" image inspect --format '{{.Id}}' "$tag" >"${tar%.tar}.id"
  echo "$key" >"${tar%.tar}.key"
  scripts/dockerd.sh stop image-build
  rm -rf "$work"
}
