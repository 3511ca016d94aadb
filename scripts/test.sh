#!/usr/bin/env bash
# The whole CertAuto test suite, on a fresh Debian machine or a developer's.
#
# Installs the system packages the suite runs against (Pebble, the ACME test CA,
# and its DNS companion pebble-challtestsrv) when they are missing, then checks
# formatting, lints, builds the docs and runs every test, Pebble-backed ones
# included. Nothing is skipped: a missing dependency is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v pebble >/dev/null 2>&1 || packages+=(pebble)
command -v pebble-challtestsrv >/dev/null 2>&1 || packages+=(pebble)
command -v cc >/dev/null 2>&1 || packages+=(gcc)
command -v curl >/dev/null 2>&1 || packages+=(curl)
command -v openssl >/dev/null 2>&1 || packages+=(openssl)
if ((${#packages[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing: ${packages[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
cargo test --workspace --locked
