#!/usr/bin/env bash
# Installs what the tests and the demo need beyond a Rust toolchain, each only when missing:
# - fakecloud 0.51.0, the local AWS emulator (a debug `cargo install`: ~10 minutes on
#   2 cores, ~450 MB; never committed);
# - cargo-deb, to build the .deb;
# - cargo-nextest, the test runner (on the machine already; installed only where missing);
# - from Debian: faketime (moves the emulator's clock in the token-expiry test), acl
#   (setfacl: the package's postinst sets a default ACL on the spool), sqlite3, rsync and logrotate
#   (real producer programs in tests/e2e/producers.rs),
#   systemd (systemd-analyze), cloud-init (schema check);
# - from PyPI: cfn-lint (CloudFormation template lint) and aws-cli (the real consumer of
#   `s3drop credentials` and `s3drop exec` in tests/e2e/handoff.rs).
set -euo pipefail
export PATH="$HOME/.cargo/bin:$HOME/.local/bin:$PATH"

fakecloud_version="0.51.0"
if ! { command -v fakecloud >/dev/null 2>&1 && [ "$(fakecloud --version 2>/dev/null)" = "fakecloud $fakecloud_version" ]; }; then
  echo "installing fakecloud $fakecloud_version (cargo install, debug build) ..." >&2
  CARGO_PROFILE_DEV_DEBUG=0 cargo install fakecloud --version "$fakecloud_version" --locked --debug
fi

cargo_deb_version="3.8.0"
if ! { command -v cargo-deb >/dev/null 2>&1 && cargo deb --version 2>/dev/null | grep -q "$cargo_deb_version"; }; then
  echo "installing cargo-deb $cargo_deb_version ..." >&2
  cargo install cargo-deb --version "$cargo_deb_version" --locked
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "installing cargo-nextest ..." >&2
  cargo install cargo-nextest --locked
fi

apt_missing=()
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || apt_missing+=(faketime)
command -v setfacl >/dev/null 2>&1 || apt_missing+=(acl)
command -v sqlite3 >/dev/null 2>&1 || apt_missing+=(sqlite3)
command -v rsync >/dev/null 2>&1 || apt_missing+=(rsync)
[ -x /usr/sbin/logrotate ] || apt_missing+=(logrotate)
command -v systemd-analyze >/dev/null 2>&1 || apt_missing+=(systemd)
command -v cloud-init >/dev/null 2>&1 || apt_missing+=(cloud-init)
if [ "${#apt_missing[@]}" -gt 0 ]; then
  echo "installing from Debian: ${apt_missing[*]} ..." >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q --no-install-recommends "${apt_missing[@]}" >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null \
         && $sudo apt-get install -y -q --no-install-recommends "${apt_missing[@]}" >/dev/null; }
fi

# Pinned: a newer cfn-lint may add rules, and the packaging test fails on any finding.
if ! command -v cfn-lint >/dev/null 2>&1; then
  echo "installing cfn-lint 1.51.0 from PyPI ..." >&2
  python3 -m pip install --quiet --user cfn-lint==1.51.0 2>/dev/null \
    || python3 -m pip install --quiet cfn-lint==1.51.0
fi

# aws-cli v1 from PyPI (v2 is not on PyPI); any 1.x with AWS_ENDPOINT_URL support will do.
if ! command -v aws >/dev/null 2>&1; then
  echo "installing aws-cli 1.45.11 from PyPI ..." >&2
  python3 -m pip install --quiet --user awscli==1.45.11 2>/dev/null \
    || python3 -m pip install --quiet awscli==1.45.11
fi
