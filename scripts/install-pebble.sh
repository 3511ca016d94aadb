#!/usr/bin/env bash
# Installs the test CA the suite runs against: Pebble and pebble-challtestsrv,
# built from source with `go install` into a project-local folder.
#
#   ./scripts/install-pebble.sh            # into .tools/bin (git-ignored)
#   CERTAUTO_PEBBLE_DIR=/opt/pebble ./scripts/install-pebble.sh
#
# The test harness (tests/src/pebble.rs) looks in the same folder, so set
# CERTAUTO_PEBBLE_DIR for both or for neither. Binaries already there are kept
# when they were built from the pinned version; anything else is rebuilt.
#
# Go is looked up on PATH and at /usr/local/go/bin/go. Without one, Debian's
# golang-go is installed if its version can build Pebble; otherwise this fails
# and says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

PEBBLE_MODULE=github.com/letsencrypt/pebble/v2
PEBBLE_VERSION=v2.10.1
# Pebble v2.10.1's go.mod says `go 1.24.0`.
GO_MIN_MINOR=24
TOOLS=(pebble pebble-challtestsrv)

bin_dir="${CERTAUTO_PEBBLE_DIR:-$PWD/.tools/bin}"
mkdir -p "$bin_dir"
bin_dir="$(cd "$bin_dir" && pwd)"

say() { echo "install-pebble: $*" >&2; }
die() {
  say "$*"
  exit 1
}

# The Go minor version of `go version` output ("go version go1.26.8 linux/amd64" -> 26).
go_minor() { "$1" version 2>/dev/null | sed -n 's/^go version go1\.\([0-9][0-9]*\).*/\1/p'; }

find_go() {
  local candidate
  for candidate in "$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go /usr/lib/go/bin/go; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    local minor
    minor="$(go_minor "$candidate")"
    if [ -n "$minor" ] && [ "$minor" -ge "$GO_MIN_MINOR" ]; then
      echo "$candidate"
      return 0
    fi
    say "ignoring $candidate: $("$candidate" version 2>/dev/null || echo 'unknown version'), need go1.$GO_MIN_MINOR or newer"
  done
  return 1
}

# Whether `bin` was built from the pinned Pebble module version (`go version -m`
# prints the module line `mod <path> <version> <sum>`).
up_to_date() {
  local go="$1" bin="$2"
  [ -x "$bin" ] || return 1
  "$go" version -m "$bin" 2>/dev/null |
    awk -v m="$PEBBLE_MODULE" -v v="$PEBBLE_VERSION" '$1 == "mod" && $2 == m && $3 == v { ok = 1 } END { exit !ok }'
}

# Written after a successful build; only consulted when there is no Go to ask.
stamp="$bin_dir/.pebble-version"

go_bin="$(find_go || true)"
if [ -z "$go_bin" ] && [ -x "$bin_dir/pebble" ] && [ -x "$bin_dir/pebble-challtestsrv" ] &&
  [ "$(cat "$stamp" 2>/dev/null)" = "$PEBBLE_MODULE@$PEBBLE_VERSION" ]; then
  say "no Go found to check the binaries; $stamp says Pebble $PEBBLE_VERSION is installed in $bin_dir"
  exit 0
fi
if [ -z "$go_bin" ]; then
  # Debian's golang-go is only worth installing when it is new enough.
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq || true
  candidate="$(apt-cache policy golang-go 2>/dev/null | sed -n 's/^ *Candidate: *//p')"
  # "2:1.19~1" -> 19
  candidate_minor="$(echo "$candidate" | sed -n 's/^\([0-9]*:\)\{0,1\}1\.\([0-9][0-9]*\).*/\2/p')"
  if [ -n "$candidate_minor" ] && [ "$candidate_minor" -ge "$GO_MIN_MINOR" ]; then
    say "installing Debian's golang-go $candidate"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq golang-go >/dev/null
    go_bin="$(find_go || true)"
  fi
  [ -n "$go_bin" ] || die "no Go toolchain go1.$GO_MIN_MINOR+ found (looked on PATH and at /usr/local/go/bin/go;" \
    "Debian's golang-go is ${candidate:-not available}). Install Go 1.$GO_MIN_MINOR or newer" \
    "(e.g. to /usr/local/go) and run this again, or build Pebble $PEBBLE_VERSION yourself with" \
    "'GOBIN=$bin_dir go install $PEBBLE_MODULE/cmd/pebble@$PEBBLE_VERSION $PEBBLE_MODULE/cmd/pebble-challtestsrv@$PEBBLE_VERSION'."
fi

missing=()
for tool in "${TOOLS[@]}"; do
  up_to_date "$go_bin" "$bin_dir/$tool" || missing+=("$PEBBLE_MODULE/cmd/$tool@$PEBBLE_VERSION")
done
if ((${#missing[@]} == 0)); then
  echo "$PEBBLE_MODULE@$PEBBLE_VERSION" >"$stamp"
  say "Pebble $PEBBLE_VERSION is installed in $bin_dir"
  exit 0
fi

say "building ${missing[*]} with $("$go_bin" version) into $bin_dir"
# GOTOOLCHAIN=local: build with this Go, never fetch another toolchain.
GOBIN="$bin_dir" GOTOOLCHAIN=local "$go_bin" install "${missing[@]}" ||
  die "go install of Pebble $PEBBLE_VERSION failed (see above)"
for tool in "${TOOLS[@]}"; do
  up_to_date "$go_bin" "$bin_dir/$tool" || die "$bin_dir/$tool is not Pebble $PEBBLE_VERSION after go install"
done
echo "$PEBBLE_MODULE@$PEBBLE_VERSION" >"$stamp"
say "Pebble $PEBBLE_VERSION is installed in $bin_dir"
