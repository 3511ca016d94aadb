#!/usr/bin/env bash
# The whole CertAuto test suite, on a fresh Debian machine or a developer's.
#
# Installs what the suite runs against when it is missing: the system packages
# (a C and a C++ compiler, curl, openssl; BIND9 for RFC 2136 and PowerDNS with its SQLite
# backend for the DNS-01 tests; redis-server for the Redis storage tests) with apt, and the test CA, Pebble and its DNS
# companion pebble-challtestsrv, built with `go install` into .tools/bin (see
# scripts/install-pebble.sh; CERTAUTO_PEBBLE_DIR overrides the folder). Then it
# checks formatting, lints, builds the docs and runs every test, Pebble-backed
# ones included. Nothing is skipped: a missing dependency is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v cc >/dev/null 2>&1 || packages+=(gcc)
# libFuzzer (the fuzz step) is C++.
command -v c++ >/dev/null 2>&1 || packages+=(g++)
command -v curl >/dev/null 2>&1 || packages+=(curl)
command -v openssl >/dev/null 2>&1 || packages+=(openssl)
[ -x /usr/sbin/named ] || packages+=(bind9)
[ -x /usr/sbin/pdns_server ] || packages+=(pdns-server)
[ -e /usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql ] || packages+=(pdns-backend-sqlite3)
command -v sqlite3 >/dev/null 2>&1 || packages+=(sqlite3)
[ -x /usr/bin/redis-server ] || packages+=(redis-server)
if ((${#packages[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing: ${packages[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

./scripts/install-pebble.sh

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
cargo test --workspace --locked

# Every fuzz target for a short bounded time (FUZZING.md has the long runs):
# 10 s each, without ASan to keep CI's build small; a crash fails the run.
FUZZ_SANITIZER=none ./scripts/fuzz.sh 10
