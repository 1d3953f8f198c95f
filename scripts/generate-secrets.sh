#!/usr/bin/env bash
# Generates, once, the token signing secret and the master key that scripts/run.sh serves with,
# into DIR (default .efms): DIR/jwt-secret (48 random bytes) and DIR/master-key (32 random bytes),
# both base64 and readable by their owner only (an existing file keeps its content; its mode is
# set again). Keep the master key: stored secrets need it.
set -euo pipefail
dir=${1:-.efms}
mkdir -p "$dir"
chmod 700 "$dir"
generate() { # FILE BYTES
  [ -s "$1" ] || (umask 077; head -c "$2" /dev/urandom | base64 | tr -d '\n' > "$1")
  chmod 600 "$1"
}
generate "$dir/jwt-secret" 48
generate "$dir/master-key" 32
