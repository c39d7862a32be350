#!/usr/bin/env bash
# Builds the release .deb (target/debian/s3drop_<version>_amd64.deb). Install it with
# `apt-get install ./target/debian/s3drop_*.deb`, write /etc/s3drop/s3drop.toml, then
# `systemctl enable --now s3drop`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh
cargo deb -p s3drop --locked "$@"
