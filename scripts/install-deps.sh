#!/usr/bin/env bash
# Installs what the tests and the demo need beyond a Rust toolchain, only when missing:
# - fakecloud 0.51.0, the local AWS emulator (a debug `cargo install`: ~10 minutes on
#   2 cores, ~450 MB; never committed);
# - Debian's faketime (libfaketime), to shift the emulator's clock in the expiry test.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"

want="0.51.0"
if ! { command -v fakecloud >/dev/null 2>&1 && [ "$(fakecloud --version 2>/dev/null)" = "fakecloud $want" ]; }; then
  echo "installing fakecloud $want (cargo install, debug build) ..." >&2
  CARGO_PROFILE_DEV_DEBUG=0 cargo install fakecloud --version "$want" --locked --debug
fi

if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ]; then
  echo "installing Debian's faketime ..." >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q faketime >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q faketime >/dev/null; }
fi
