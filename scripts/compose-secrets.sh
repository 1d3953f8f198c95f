#!/usr/bin/env bash
# Generates, once, what docker-compose.yml reads from files into DIR (default .efms/compose):
# the token signing secret and master key (scripts/generate-secrets.sh), the database password,
# and a TLS certificate for efms (names efms, localhost and 127.0.0.1) issued by a CA of its own,
# valid for a year: tls-chain.pem (certificate then CA), tls-key.pem, ca.pem (what agents and
# clients trust). Existing files are kept. DIR is readable by its owner alone; the files in it
# are readable by every user, since the containers read them as their own unprivileged users.
#
#   scripts/compose-secrets.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.efms/compose}
scripts/generate-secrets.sh "$dir"
[ -s "$dir/postgres-password" ] || (umask 077; head -c 24 /dev/urandom | base64 | tr -d '\n/+=' >"$dir/postgres-password")
if [ ! -s "$dir/tls-chain.pem" ] || [ ! -s "$dir/tls-key.pem" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -days 3650 -subj "/CN=efms compose CA" \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
  openssl req "${ec[@]}" -subj "/CN=efms" -keyout "$work/key.pem" -out "$work/leaf.csr" 2>/dev/null
  printf 'subjectAltName=DNS:efms,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$work/ext"
  openssl x509 -req -in "$work/leaf.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -days 365 -extfile "$work/ext" -out "$work/leaf.pem" 2>/dev/null
  cat "$work/leaf.pem" "$work/ca.pem" >"$dir/tls-chain.pem"
  cp "$work/key.pem" "$dir/tls-key.pem"
  cp "$work/ca.pem" "$dir/ca.pem"
fi
chmod 700 "$dir"
chmod 644 "$dir"/jwt-secret "$dir"/master-key "$dir"/postgres-password "$dir"/tls-chain.pem \
  "$dir"/tls-key.pem "$dir"/ca.pem
echo "$dir"
