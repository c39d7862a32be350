#!/usr/bin/env bash
# Installs the local AWS emulator the tests and the demo run against, only when the
# right version is missing (a debug build: ~10 minutes on 2 cores, ~450 MB; never committed).
set -euo pipefail
want="0.51.0"
export PATH="$HOME/.cargo/bin:$PATH"
if command -v fakecloud >/dev/null 2>&1 && [ "$(fakecloud --version 2>/dev/null)" = "fakecloud $want" ]; then
  exit 0
fi
echo "installing fakecloud $want (cargo install, debug build) ..." >&2
CARGO_PROFILE_DEV_DEBUG=0 cargo install fakecloud --version "$want" --locked --debug
