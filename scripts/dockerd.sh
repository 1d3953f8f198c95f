#!/usr/bin/env bash
# Runs Docker engines for the tests, each standing for one VM: a `dockerd` with its own data root,
# exec root, pid file and unix socket, no systemd, no iptables and no bridge (containers use the
# host's network or none), and the images `scripts/envoy-image.sh` saved loaded into it.
#
#   scripts/dockerd.sh start NAME   # starts engine NAME (or finds it running); prints its DOCKER_HOST
#   scripts/dockerd.sh stop NAME    # stops engine NAME (its containers stop with it, and are kept)
#   scripts/dockerd.sh stop-all     # stops every engine of this checkout and unmounts what they left
#   scripts/dockerd.sh host NAME    # prints engine NAME's DOCKER_HOST, running or not
#
# Engines live under $EFMS_DOCKER_ROOT (default /tmp/efmsd/<8 hex digits naming this checkout>):
# containerd's socket path under the exec root must fit in 108 characters, so the path stays short.
# NAME is 1 to 16 of [a-z0-9-]. An engine keeps its data root across stops: its containers and
# images are there when it starts again. Logs: <root>/NAME/dockerd.log.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$(pwd)
ROOT=${EFMS_DOCKER_ROOT:-/tmp/efmsd/$(printf '%s' "$checkout" | sha256sum | cut -c1-8)}
IMAGES="$checkout/.tools/docker/images"
# The CLI that came with the engine, when there is one: it speaks the engine's API version.
DOCKER=$(command -v /usr/bin/docker || command -v docker || true)

die() { echo "dockerd.sh: $*" >&2; exit 1; }

engine_dir() {
  [[ "$1" =~ ^[a-z0-9-]{1,16}$ ]] || die "engine name '$1' is not 1 to 16 of [a-z0-9-]"
  echo "$ROOT/$1"
}

# The pid of engine DIR's dockerd when it runs, nothing otherwise.
engine_pid() {
  local pid
  pid=$(cat "$1/dockerd.pid" 2>/dev/null) || return 0
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -qa -- "--exec-root" "/proc/$pid/cmdline" 2>/dev/null \
    && grep -qa -- "$1/exec" "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
  return 0
}

answers() { DOCKER_HOST="unix://$1/docker.sock" "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# Unmounts every mount point under DIR, deepest first.
unmount_under() {
  local dir=$1 mnt
  # Field 5 of mountinfo is the mount point (octal escapes for spaces; our paths have none).
  awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r mnt; do
    umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
  done
}

# The cgroup parent of engine DIR's containers: unique per engine, so that leftovers are found.
cgroup_parent() { echo "efmsd-$(printf '%s' "$1" | sha256sum | cut -c1-10)"; }

# Ends what a killed engine leaves behind under DIR: its containerd and shims (their command lines
# name DIR) and its containers' processes (in its cgroup parent, cgroup v1 or v2).
kill_leftovers() {
  local dir=$1 pid cg
  # The bracket keeps grep from finding its own command line.
  for pid in $(grep -lsa -- "$dir/exe[c]/" /proc/[0-9]*/cmdline | cut -d/ -f3); do
    [ "$pid" != "$$" ] && kill -KILL "$pid" 2>/dev/null || true
  done
  for cg in /sys/fs/cgroup/*/"$(cgroup_parent "$dir")" /sys/fs/cgroup/"$(cgroup_parent "$dir")"; do
    [ -d "$cg" ] || continue
    find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

load_images() {
  local dir=$1 tar want have
  shopt -s nullglob
  for tar in "$IMAGES"/*.tar; do
    want=$(cat "${tar%.tar}.id" 2>/dev/null) || continue
    have=$(DOCKER_HOST="unix://$dir/docker.sock" "$DOCKER" image inspect --format '{{.Id}}' \
      "$(cat "${tar%.tar}.tag")" 2>/dev/null || true)
    [ "$have" = "$want" ] || DOCKER_HOST="unix://$dir/docker.sock" "$DOCKER" load --quiet --input "$tar" >/dev/null
  done
}

start() {
  local dir pid i
  dir=$(engine_dir "$1")
  command -v dockerd >/dev/null || die "dockerd is not installed: run scripts/install-docker.sh"
  [ -n "$DOCKER" ] || die "no docker CLI: run scripts/install-docker.sh"
  mkdir -p "$dir"
  exec 9>"$dir/lock"
  flock -w 120 9 || die "engine $1 is locked by another start or stop"
  pid=$(engine_pid "$dir")
  if [ -z "$pid" ]; then
    # A killed engine leaves its pid file, which would stop a new one, and its containerd, which a
    # new one waits for in vain: end them; the new engine finds its containers exited.
    kill_leftovers "$dir"
    unmount_under "$dir"
    rm -f "$dir/dockerd.pid" "$dir/docker.sock"
    [ -f "$dir/daemon.json" ] || echo '{}' >"$dir/daemon.json"
    # --config-file: nothing from the host's /etc/docker/daemon.json. The cgroup parent keeps each
    # engine's containers apart in the host's cgroup tree.
    setsid dockerd \
      --config-file "$dir/daemon.json" \
      --data-root "$dir/data" \
      --exec-root "$dir/exec" \
      --pidfile "$dir/dockerd.pid" \
      --host "unix://$dir/docker.sock" \
      --cgroup-parent "$(cgroup_parent "$dir")" \
      --iptables=false --ip6tables=false --ip-masq=false --bridge=none \
      </dev/null >>"$dir/dockerd.log" 2>&1 9>&- &
    pid=$!
    for i in $(seq 300); do
      answers "$dir" && break
      kill -0 "$pid" 2>/dev/null || { tail -n 5 "$dir/dockerd.log" >&2; die "engine $1 exited while starting"; }
      sleep 0.1
    done
    answers "$dir" || { tail -n 5 "$dir/dockerd.log" >&2; die "engine $1 did not answer within 30 s"; }
  else
    for i in $(seq 300); do answers "$dir" && break; sleep 0.1; done
    answers "$dir" || die "engine $1 runs (pid $pid) but does not answer"
  fi
  load_images "$dir"
  echo "unix://$dir/docker.sock"
}

stop() {
  local dir pid i
  dir=$(engine_dir "$1")
  [ -d "$dir" ] || return 0
  exec 9>"$dir/lock"
  flock -w 120 9 || die "engine $1 is locked by another start or stop"
  pid=$(engine_pid "$dir")
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    # dockerd gives each container its stop timeout (10 s by default) before killing it.
    for i in $(seq 600); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && { kill -KILL "$pid" 2>/dev/null || true; }
  fi
  kill_leftovers "$dir"
  unmount_under "$dir"
  rm -f "$dir/dockerd.pid" "$dir/docker.sock"
  exec 9>&-
}

stop_all() {
  local dir pids=() pid failed=0
  [ -d "$ROOT" ] || return 0
  # In parallel: each engine waits for its containers to stop.
  for dir in "$ROOT"/*/; do
    dir=${dir%/}
    [ -d "$dir" ] || continue
    stop "$(basename "$dir")" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  unmount_under "$ROOT"
  return $failed
}

case "${1:-}" in
  start) [ $# -eq 2 ] || die "usage: start NAME"; start "$2" ;;
  stop) [ $# -eq 2 ] || die "usage: stop NAME"; stop "$2" ;;
  stop-all) stop_all ;;
  host) [ $# -eq 2 ] || die "usage: host NAME"; echo "unix://$(engine_dir "$2")/docker.sock" ;;
  *) die "usage: start NAME | stop NAME | stop-all | host NAME" ;;
esac
