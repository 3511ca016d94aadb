#!/usr/bin/env bash
# Runs CertAuto's cargo-fuzz targets (fuzz/, see FUZZING.md), one at a time,
# each for a bounded time; fails on the first crash, leaving the input in
# fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 10 s, every target
#
# FUZZ_SANITIZER: address (the default, for long runs) or none (CI's short
# runs: builds about twice as fast and runs faster; a crash is still a
# panic, but memory errors in C code such as ring's are not caught).
# FUZZ_RSS_LIMIT_MB (default 2048) bounds each run's memory.
# Installs what it needs when missing: the nightly toolchain (rustup,
# minimal profile; without a sanitizer, the stable one with RUSTC_BOOTSTRAP=1
# when nightly cannot be installed) and cargo-fuzz (crates.io, pinned version).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds="${1:-10}"
shift || true
sanitizer="${FUZZ_SANITIZER:-address}"
rss="${FUZZ_RSS_LIMIT_MB:-2048}"

if ! command -v c++ >/dev/null 2>&1; then
  echo "fuzz: no C++ compiler: libFuzzer (libfuzzer-sys) needs one; install g++" >&2
  exit 1
fi

toolchain=nightly
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "installing the nightly toolchain (minimal profile)"
  if ! timeout 600 rustup toolchain install nightly --profile minimal; then
    # No nightly (a machine whose rustup cannot download toolchains):
    # without a sanitizer, cargo-fuzz's flags build on the stable compiler
    # when it is told to accept them.
    if [ "$sanitizer" != none ]; then
      echo "fuzz: no nightly toolchain, and FUZZ_SANITIZER=$sanitizer needs one" >&2
      exit 1
    fi
    echo "fuzz: no nightly toolchain; building on stable with RUSTC_BOOTSTRAP=1"
    toolchain=stable
    export RUSTC_BOOTSTRAP=1
  fi
fi
if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo "+$toolchain" fuzz list)
fi

# One build for every target, reused by each run below (same flags).
cargo "+$toolchain" fuzz build --sanitizer "$sanitizer"

for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  args=(-max_total_time="$seconds" -rss_limit_mb="$rss" -timeout=10 -print_final_stats=1)
  [ -f "fuzz/dict/$target.dict" ] && args+=(-dict="fuzz/dict/$target.dict")
  echo "== fuzz $target for ${seconds}s"
  cargo "+$toolchain" fuzz run --sanitizer "$sanitizer" "$target" "$corpus" "fuzz/seeds/$target" -- "${args[@]}"
done
