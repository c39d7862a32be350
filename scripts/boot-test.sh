#!/usr/bin/env bash
# s3drop under a real systemd and a real cloud-init: boots the host's systemd as PID 1 of
# new PID, mount, UTS, IPC and cgroup namespaces, over a throwaway overlay of / (nothing is
# written to the host's disk), sharing the host's network so the local AWS on 127.0.0.1 is
# reachable. See ../shared/REAL-BOOT.md for how.
#
#   scripts/boot-test.sh [PATH.deb]
#
# Three boots:
#   1. the .deb installed with dpkg (its real postinst) and the hardened unit exercised;
#   2. cloud-init (NoCloud seed) running cloud-init/user-data.yaml, which downloads the .deb
#      from a local HTTP server, installs it, starts s3drop and prints `s3drop check`;
#   3. the same with an upload role that does not exist: the check fails loudly on the
#      console and the boot still completes.
# Without PATH.deb it packages the debug build (cargo deb --no-build --profile dev).
# Needs root (namespaces, mounts). Uses the local AWS named by S3DROP_BOOT_WORLD (a file of
# NAME=value lines, see testkit's world_env), else starts testkit's s3drop-world. Stops
# everything it started, leaves no mount, cgroup or file behind, never changes the host's
# sysctls, and only talks to 127.0.0.1. Prints "ok - ..." per assertion and exits non-zero
# at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
export PATH="$HOME/.cargo/bin:$PATH"

[ "$(id -u)" = 0 ] || { echo "boot-test: needs root (namespaces and mounts)" >&2; exit 2; }
started_at=$(date +%s)
work="$(mktemp -d /tmp/s3drop-boot.XXXXXX)"
world_pid="" http_pid="" script_pid="" sd_pid="" root="" console=""
cgroups=()

say() { echo "boot-test: $*" >&2; }
ok() { echo "ok - $*"; }
in_box() { nsenter -t "$sd_pid" -a "$@"; }
fail() {
  echo "not ok - $*"
  if [ -n "$sd_pid" ] && kill -0 "$sd_pid" 2>/dev/null; then
    echo "--- journal (last 80 lines) ---"
    in_box journalctl --no-pager -n 80 -o short-precise 2>&1 || true
  fi
  [ -n "$console" ] && [ -f "$console" ] && { echo "--- console (last 40 lines) ---"; tail -n 40 "$console"; }
  exit 1
}

# Powers the container off (systemd's RTMIN+4) and waits until it is gone.
poweroff_box() {
  if [ -n "$sd_pid" ] && kill -0 "$sd_pid" 2>/dev/null; then
    kill -s RTMIN+4 "$sd_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$sd_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$sd_pid" 2>/dev/null || true
  fi
  if [ -n "$script_pid" ]; then
    kill "$script_pid" 2>/dev/null || true
    wait "$script_pid" 2>/dev/null || true
  fi
  sd_pid="" script_pid=""
}

cleanup() {
  set +e
  poweroff_box
  for pid in "$http_pid" "$world_pid"; do
    [ -n "$pid" ] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }
  done
  for cg in "${cgroups[@]}"; do
    [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT

# --- the package and a local AWS ---------------------------------------------------------------
deb="${1:-}"
if [ -z "$deb" ]; then
  say "packaging the debug build"
  cargo build --locked -p s3drop --bin s3drop >&2
  cargo deb -p s3drop --no-build --profile dev --no-strip --fast -o "$work" >&2 2>/dev/null
  deb="$(ls "$work"/*.deb)"
fi
[ -f "$deb" ] || { echo "boot-test: no package at $deb" >&2; exit 2; }

if [ -n "${S3DROP_BOOT_WORLD:-}" ]; then
  cp "$S3DROP_BOOT_WORLD" "$work/world.env"
else
  cargo build --locked -q -p s3drop-testkit --bin s3drop-world >&2
  target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  "$target_dir/debug/s3drop-world" "$work/world.env" > "$work/world.log" 2>&1 &
  world_pid=$!
  for _ in $(seq 600); do [ -f "$work/world.env" ] && break; sleep 0.1; done
  [ -f "$work/world.env" ] || { cat "$work/world.log" >&2; fail "the local AWS did not start"; }
fi
# shellcheck disable=SC1091
. "$work/world.env"
case "$ENDPOINT" in http://127.0.0.1:*) ;; *) fail "endpoint $ENDPOINT is not on 127.0.0.1" ;; esac
say "local AWS at $ENDPOINT, bucket $BUCKET"

# An object as the emulator's admin (SigV4-signed).
s3_get() { # KEY (any bytes: percent-encoded here)
  local path; path="$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1].encode("utf-8", "surrogateescape"), safe="/"))' "$1")"
  curl -sfg --aws-sigv4 "aws:amz:$REGION:s3" --user test:test "$ENDPOINT/$BUCKET/$path"
}
wait_object() { # KEY FILE SECONDS: until the stored object equals FILE
  local deadline=$(( $(date +%s) + $3 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if s3_get "$1" > "$work/got" 2>/dev/null && cmp -s "$work/got" "$2"; then return 0; fi
    sleep 0.3
  done
  return 1
}

# --- booting a container ---------------------------------------------------------------------
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then cg2=/sys/fs/cgroup; else cg2=/sys/fs/cgroup/unified; fi
boots=0

# Run inside every new root before systemd starts: masks for host units that must not run
# in a container sharing the host's network and kernel, no fstab, and a boot target that
# needs only sysinit.target and journald. Each boot's own preparation follows it.
cat > "$work/common.sh" <<'SH'
: > /etc/fstab
for unit in networking.service systemd-networkd.service systemd-networkd.socket \
  systemd-resolved.service NetworkManager.service systemd-networkd-wait-online.service \
  NetworkManager-wait-online.service systemd-timesyncd.service ssh.service ssh.socket \
  cron.service getty.target console-getty.service postgresql.service docker.service \
  containerd.service apt-daily.timer apt-daily-upgrade.timer man-db.timer fstrim.timer \
  logrotate.timer e2scrub_all.timer dpkg-db-backup.timer systemd-sysctl.service \
  systemd-binfmt.service systemd-modules-load.service systemd-remount-fs.service \
  cloud-init-local.service cloud-init.service cloud-config.service cloud-final.service \
  cloud-init-hotplugd.socket; do
  ln -sf /dev/null "/etc/systemd/system/$unit"
done
cat > /etc/systemd/system/s3drop-boot.target <<'UNIT'
[Unit]
Description=s3drop boot test
Requires=sysinit.target
Wants=systemd-journald.service
After=sysinit.target systemd-journald.service
AllowIsolate=yes
UNIT
SH

# The container's systemd: the process below PID $1 that runs it (so that several boot
# tests on one machine never mistake each other's).
systemd_below() {
  local child
  for child in $(pgrep -P "$1" || true); do
    if tr '\0' ' ' < "/proc/$child/cmdline" 2>/dev/null \
        | grep -q "^/lib/systemd/systemd --system --unit=s3drop-boot.target"; then
      echo "$child"
      return
    fi
    systemd_below "$child"
  done
}

# boot PREPARE: a new container whose root is first prepared by common.sh and the script
# PREPARE (run in it with the package beside them, in /root/s3drop-boot), then systemd as
# its PID 1. Sets sd_pid (systemd's PID here), root (its / seen from here), console.
boot() {
  boots=$((boots + 1))
  local dir="$work/boot-$boots" cgroup="$cg2/s3drop-boot-$$-$boots"
  mkdir -p "$dir/seed" "$cgroup"
  cgroups+=("$cgroup")
  cp "$deb" "$dir/seed/s3drop.deb"
  cp "$work/common.sh" "$dir/seed/common.sh"
  cp "$1" "$dir/seed/prepare.sh"
  cat > "$dir/stage1.sh" <<SH
#!/bin/sh
# PID 1 of the new PID namespace: into a fresh cgroup, then a cgroup namespace of its own.
set -eu
echo \$\$ > "$cgroup/cgroup.procs"
exec unshare --cgroup "$dir/stage2.sh"
SH
  cat > "$dir/stage2.sh" <<SH
#!/bin/sh
# A throwaway root over /, kernel filesystems of its own, then systemd as PID 1.
set -eu
console=\$(tty)
mount --make-rprivate /
mkdir -p "$dir/t"
mount -t tmpfs -o mode=755 tmpfs "$dir/t"
mkdir -p "$dir/t/upper/root/s3drop-boot" "$dir/t/work" "$dir/t/root"
cp "$dir/seed/"* "$dir/t/upper/root/s3drop-boot/"
mount -t overlay overlay -o "lowerdir=/,upperdir=$dir/t/upper,workdir=$dir/t/work" "$dir/t/root"
R="$dir/t/root"
mount -t proc proc "\$R/proc"
mount --bind "\$R/proc/sys" "\$R/proc/sys"
mount -o remount,bind,ro "\$R/proc/sys"
mount -t sysfs -o ro sysfs "\$R/sys"
mount -t cgroup2 cgroup2 "\$R/sys/fs/cgroup"
mount -t tmpfs -o mode=755 tmpfs "\$R/dev"
for n in null zero full random urandom tty; do touch "\$R/dev/\$n"; mount --bind "/dev/\$n" "\$R/dev/\$n"; done
mkdir "\$R/dev/pts" "\$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "\$R/dev/pts"
ln -s pts/ptmx "\$R/dev/ptmx"
mount -t tmpfs tmpfs "\$R/dev/shm"
ln -s /proc/self/fd "\$R/dev/fd"
ln -s /proc/self/fd/0 "\$R/dev/stdin"
ln -s /proc/self/fd/1 "\$R/dev/stdout"
ln -s /proc/self/fd/2 "\$R/dev/stderr"
touch "\$R/dev/console"
mount --bind "\$console" "\$R/dev/console"
mount -t tmpfs tmpfs "\$R/run"
mount -t tmpfs tmpfs "\$R/tmp"
chroot "\$R" /bin/sh -ec '. /root/s3drop-boot/common.sh; . /root/s3drop-boot/prepare.sh'
cd "\$R"
mkdir -p .oldroot
pivot_root . .oldroot
cd /
umount -l /.oldroot
exec env -i container=s3drop-boot /lib/systemd/systemd --system --unit=s3drop-boot.target
SH
  chmod +x "$dir/stage1.sh" "$dir/stage2.sh"
  console="$dir/console.log"
  setsid script -qfec "unshare --pid --fork --mount --uts --ipc $dir/stage1.sh" "$console" \
    > /dev/null 2>&1 < /dev/null &
  script_pid=$!
  sd_pid=""
  for _ in $(seq 300); do
    sd_pid="$(systemd_below "$script_pid")"
    [ -n "$sd_pid" ] && break
    sleep 0.1
  done
  [ -n "$sd_pid" ] || fail "systemd did not start"
  root="/proc/$sd_pid/root"
}

# poll_state TRIES "STATE|STATE" CMD...: runs CMD every 0.2 s until it prints one of the
# states; prints the last output; fails after TRIES tries.
poll_state() {
  local tries=$1 states=$2 state=""
  shift 2
  for _ in $(seq "$tries"); do
    state="$("$@" 2>/dev/null || true)"
    case "|$states|" in *"|$state|"*) echo "$state"; return 0 ;; esac
    sleep 0.2
  done
  echo "$state"
  return 1
}

# Until the container's systemd has booted: "running", or "degraded" when a unit failed.
wait_booted() { poll_state "$1" "running|degraded" in_box systemctl is-system-running; }

main_pid() { in_box systemctl show -p MainPID --value s3drop.service; }
status_text() { in_box systemctl show -p StatusText --value s3drop.service; }
journal_count() { in_box journalctl -u s3drop.service --no-pager -o cat | grep -c "$1" || true; }
wait_status() { # NEEDLE SECONDS
  local deadline=$(( $(date +%s) + $2 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    case "$(status_text)" in *"$1"*) return 0 ;; esac
    sleep 0.2
  done
  return 1
}
produce() { # RELATIVE SOURCE: a producer (root, umask 022) drops a file, renamed into place
  local dir; dir="$(dirname "$root/var/spool/s3drop/$1")"
  (umask 022; mkdir -p "$dir"; cp "$2" "$dir/.incoming.tmp"; mv "$dir/.incoming.tmp" "$root/var/spool/s3drop/$1")
}

# ==== 1. the package under systemd ================================================================
cat > "$work/prepare-daemon.sh" <<SH
DEBIAN_FRONTEND=noninteractive dpkg -i /root/s3drop-boot/s3drop.deb > /root/s3drop-boot/dpkg.log 2>&1
mkdir -p /etc/s3drop /etc/systemd/system/s3drop.service.d
cat > /etc/s3drop/s3drop.toml <<'TOML'
watch_dir = "/var/spool/s3drop"
bucket = "$BUCKET"
role_arn = "$ROLE_ARN"
region = "$REGION"
settle_seconds = 1
TOML
cat > /etc/systemd/system/s3drop.service.d/local-aws.conf <<'UNIT'
[Service]
Environment=AWS_ENDPOINT_URL=$ENDPOINT
Environment=AWS_EC2_METADATA_SERVICE_ENDPOINT=$ENDPOINT
Environment=S3DROP_TEST_EMULATOR_MULTIPART_ACTIONS=1
WatchdogSec=4s
RestartSec=1s
UNIT
SH
say "boot 1: the package under systemd"
boot "$work/prepare-daemon.sh"
state="$(wait_booted 300)" || fail "systemd did not boot: $state"
ok "systemd booted as PID 1 ($state)"

in_box dpkg -s s3drop > /dev/null \
  || fail "dpkg -i did not install s3drop: $(in_box cat /root/s3drop-boot/dpkg.log)"
ok "dpkg -i installed the package (postinst ran: $(in_box id s3drop))"
timeout 60 nsenter -t "$sd_pid" -a systemctl start s3drop.service \
  || fail "systemctl start did not return 0 within 60 s"
[ "$(in_box systemctl is-active s3drop.service)" = active ] || fail "s3drop.service is not active"
ok "systemctl start returned and the unit is active (after READY)"

head -c 12345 /dev/urandom > "$work/small.bin"
produce small.bin "$work/small.bin"
wait_object "${PREFIX}small.bin" "$work/small.bin" 30 || fail "the small file did not arrive"
since=$(date +%s%N)
wait_status "1 uploaded" 5 || fail "STATUS did not show the upload within 5 s: $(status_text)"
lag_ms=$(( ($(date +%s%N) - since) / 1000000 ))
ok "a small file arrived byte-identical; STATUS followed within ${lag_ms} ms: $(status_text)"
# The journal's message is the whole sentence: the file and its key, not a bare "uploaded".
upload_line="$(in_box journalctl -u s3drop.service --no-pager -o cat | grep -F "small.bin → s3://$BUCKET/${PREFIX}small.bin" || true)"
[ -n "$upload_line" ] || fail "journalctl -o cat shows no upload line naming the key: $(in_box journalctl -u s3drop.service --no-pager -o cat | tail -5)"
ok "journalctl -o cat: $upload_line"

head -c $((20 * 1024 * 1024 + 7)) /dev/urandom > "$work/big.bin"
produce big.bin "$work/big.bin"
wait_object "${PREFIX}big.bin" "$work/big.bin" 60 || fail "the multipart file did not arrive"
ok "a 20 MiB file arrived byte-identical in parts, under the syscall filter"

pid="$(main_pid)"
status_of() { in_box cat "/proc/$pid/status"; }
status_of | grep -q "^Seccomp:[[:space:]]*2" || fail "Seccomp is not 2"
status_of | grep -q "^NoNewPrivs:[[:space:]]*1" || fail "NoNewPrivs is not 1"
uid="$(in_box id -u s3drop)"
status_of | grep -q "^Uid:[[:space:]]*$uid[[:space:]]" || fail "not running as s3drop ($uid)"
for cap in CapInh CapPrm CapEff CapBnd CapAmb; do
  status_of | grep -q "^$cap:[[:space:]]*0000000000000000" || fail "$cap is not empty"
done
ok "/proc/$pid/status: Seccomp 2, NoNewPrivs 1, uid $uid (s3drop), every capability set empty"

# A FIFO is never uploaded; the rescan that reload asks for reports it with a warning.
in_box mkfifo -m 0640 /var/spool/s3drop/a-fifo
in_box systemctl reload s3drop.service || fail "systemctl reload failed"
for _ in $(seq 50); do [ "$(journal_count "SIGHUP: rescanning")" -gt 0 ] && break; sleep 0.2; done
[ "$(journal_count "SIGHUP: rescanning")" -gt 0 ] || fail "reload did not make s3drop rescan"
[ "$(main_pid)" = "$pid" ] || fail "reload restarted the daemon"
ok "systemctl reload rescanned without a restart (MainPID $pid)"

warned() { in_box journalctl -u s3drop.service -p warning --no-pager -o cat | grep -q "not a regular file"; }
for _ in $(seq 50); do warned && break; sleep 0.2; done
warned || fail "the warning is not visible with journalctl -p warning"
ok "a warning is visible with journalctl -p warning (native journald, PRIORITY=4)"

restarts="$(in_box systemctl show -p NRestarts --value s3drop.service)"
in_box kill -STOP "$pid"
for _ in $(seq 100); do
  new="$(main_pid)"
  [ -n "$new" ] && [ "$new" != 0 ] && [ "$new" != "$pid" ] && break
  sleep 0.2
done
[ "$(main_pid)" != "$pid" ] || fail "the watchdog did not kill the stopped daemon"
for _ in $(seq 100); do [ "$(in_box systemctl is-active s3drop.service)" = active ] && break; sleep 0.2; done
[ "$(in_box systemctl show -p NRestarts --value s3drop.service)" -gt "$restarts" ] || fail "no restart counted"
ok "a SIGSTOPped daemon was killed by the watchdog (WatchdogSec=4s) and restarted"

# A filtered call kills instead of failing; delete mode in a producer's new subdirectory.
cat > "$root/etc/systemd/system/s3drop.service.d/strict-filter.conf" <<'UNIT'
[Service]
SystemCallErrorNumber=
UNIT
cat > "$root/etc/systemd/system/s3drop.service.d/write-access.conf" <<'UNIT'
[Service]
ReadWritePaths=/var/spool/s3drop
UNIT
sed -i 's/^settle_seconds = 1$/settle_seconds = 1\nafter_upload = "delete"/' "$root/etc/s3drop/s3drop.toml"
in_box systemctl daemon-reload
timeout 60 nsenter -t "$sd_pid" -a systemctl restart s3drop.service || fail "restart failed"
head -c 4096 /dev/urandom > "$work/nested.bin"
nested="$root/var/spool/s3drop/made-by-producer/deeper/nested.bin"
produce "made-by-producer/deeper/nested.bin" "$work/nested.bin"
wait_object "${PREFIX}made-by-producer/deeper/nested.bin" "$work/nested.bin" 30 \
  || fail "the file in a producer's new subdirectory did not arrive"
for _ in $(seq 100); do [ -e "$nested" ] || break; sleep 0.2; done
[ ! -e "$nested" ] \
  || fail "delete mode could not delete in a producer's subdirectory ($(stat -c %A "$(dirname "$nested")"))"
[ "$(in_box systemctl is-active s3drop.service)" = active ] || fail "the daemon died under the strict filter"
[ "$(journal_count "status=31/SYS")" = 0 ] || fail "a filtered syscall killed s3drop"
ok "delete mode (with the documented ReadWritePaths= drop-in) deleted a file in a subdirectory a producer made with umask 022; no filtered call with SystemCallErrorNumber= cleared"

# A hostile producer (a member of the s3drop group, not s3drop) swaps a directory for a
# link to a directory only the s3drop user may read, within the quiet period, 30 times,
# with delete mode on: nothing of it is uploaded, nothing of it is deleted.
in_box useradd --no-create-home --groups s3drop producer
in_box install -d -o s3drop -g s3drop -m 0700 /srv/private
echo "only s3drop may read this" > "$root/srv/private/x"
in_box chown s3drop:s3drop /srv/private/x
in_box chmod 0600 /srv/private/x
in_box runuser -u producer -- sh -ec 'cd /var/spool/s3drop; for i in $(seq 1 30); do
  mkdir swap$i; echo "inside $i" > swap$i/x; mv swap$i swap$i.old; ln -s /srv/private swap$i; done'
echo "inside 30" > "$work/inside30"
wait_object "${PREFIX}swap30.old/x" "$work/inside30" 30 || fail "the renamed directories did not arrive"
sleep 1
for i in $(seq 1 30); do
  s3_get "${PREFIX}swap$i/x" > /dev/null 2>&1 && fail "swap$i/x was read through the link and uploaded"
done
[ -f "$root/srv/private/x" ] || fail "a file outside the drop directory was deleted through the link"
ok "a producer swapping a directory for a link to s3drop-readable /srv/private (30 tries, delete mode): nothing read, nothing deleted; the real files arrived"

# The credential broker under the hardened unit (the strict filter still on): a member of
# the s3drop group is served over /run/s3drop/broker.sock without IMDS or STS of its own;
# a program it starts with `s3drop exec` fetches its session from the loopback endpoint
# (pidfd_open under the filter); an outsider is refused by the kernel.
sed -i 's/^after_upload = "delete"$/after_upload = "delete"\nbroker = true/' "$root/etc/s3drop/s3drop.toml"
timeout 60 nsenter -t "$sd_pid" -a systemctl restart s3drop.service || fail "restart with the broker failed"
for _ in $(seq 100); do in_box test -S /run/s3drop/broker.sock && break; sleep 0.2; done
[ "$(in_box stat -c '%a %U:%G' /run/s3drop)" = "750 s3drop:s3drop" ] \
  || fail "/run/s3drop is $(in_box stat -c '%a %U:%G' /run/s3drop)"
[ "$(in_box stat -c '%a %U:%G' /run/s3drop/broker.sock)" = "660 s3drop:s3drop" ] \
  || fail "the broker's socket is $(in_box stat -c '%a %U:%G' /run/s3drop/broker.sock)"
served=""
for _ in $(seq 50); do
  served="$(in_box runuser -u producer -- s3drop credentials --config /etc/s3drop/s3drop.toml 2>&1)" && break
  sleep 0.2
done
case "$served" in *'"SessionToken"'*) ;; *) fail "a member of the s3drop group was not served: $served" ;; esac
in_box journalctl -u s3drop.service --no-pager -o cat | grep -q "credential broker: a session for ${PREFIX}\* to uid $(in_box id -u producer) " \
  || fail "the hand-out is not in the journal with the caller's uid"
fetched="$(in_box runuser -u producer -- s3drop exec --config /etc/s3drop/s3drop.toml --prefix exec -- \
  sh -c 'curl -s -H "Authorization: $AWS_CONTAINER_AUTHORIZATION_TOKEN" "$AWS_CONTAINER_CREDENTIALS_FULL_URI"' 2>&1)"
case "$fetched" in *'"AccessKeyId"'*) ;; *) fail "the program s3drop exec started got no session from the endpoint: $fetched" ;; esac
[ "$(journal_count "status=31/SYS")" = 0 ] || fail "a filtered syscall killed s3drop (pidfd_open?)"
in_box journalctl -u s3drop.service --no-pager -o cat | grep -q "is no longer served (exited)" \
  || fail "the exec registration did not end with the program"
outsider="$(in_box runuser -u nobody -- s3drop credentials --config /etc/s3drop/s3drop.toml 2>&1)" \
  && fail "an outsider got a session: $outsider"
case "$outsider" in *"Permission denied"*) ;; *) fail "the outsider was not refused by the socket: $outsider" ;; esac
ok "the broker under the hardened unit: /run/s3drop 750 and its socket 660 s3drop:s3drop; a group member served (journal names its uid), a program started by exec fetched its session from the endpoint (pidfd_open under the strict filter), an outsider refused"

# A name with ESC, BEL, CR and LF: what journalctl shows an operator carries none raw.
evil="$(printf 'evil\033[31mred\007\r\nFORGED line')"
printf 'x' > "$work/evil.bin"
produce "$evil" "$work/evil.bin"
evil_key="${PREFIX}$(printf 'evil\342\220\233[31mred\342\220\207\342\220\215\342\220\212FORGED line')"
wait_object "$evil_key" "$work/evil.bin" 30 || fail "the file with control characters did not arrive"
for mode in cat short verbose; do
  shown="$(in_box journalctl -u s3drop.service --no-pager -o "$mode")"
  printf '%s' "$shown" | grep -q "$(printf '[\033\007\r]')" \
    && fail "journalctl -o $mode shows a raw control character"
  printf '%s\n' "$shown" | grep -q '^FORGED line' && fail "journalctl -o $mode shows a forged line"
done
ok "a name with ESC, BEL, CR and LF: journalctl -o cat, short and verbose show none of them raw"

# A file whose key would pass S3's 1,024 bytes: one error sentence naming the file, a
# STATUS line within bounds, and `status` lists it whether the daemon runs or not.
deep="$(for i in $(seq -w 1 150); do printf 'dir%s/' "$i"; done)"
printf 'too deep' > "$work/deep.bin"
produce "${deep}deep.bin" "$work/deep.bin"
failed_line() { in_box journalctl -u s3drop.service -p err --no-pager -o cat | grep -F "deep.bin not uploaded" || true; }
for _ in $(seq 100); do [ -n "$(failed_line)" ] && break; sleep 0.2; done
[ -n "$(failed_line)" ] || fail "no error line for the file without a valid key"
case "$(failed_line)" in *1024*) ;; *) fail "the error does not say why: $(failed_line)" ;; esac
ok "journalctl -p err: $(failed_line | cut -c1-60)…$(failed_line | rev | cut -c1-110 | rev)"

clean_exits="$(journal_count "Deactivated successfully")"
timeout 60 nsenter -t "$sd_pid" -a systemctl stop s3drop.service || fail "systemctl stop failed"
[ "$(journal_count "Deactivated successfully")" -gt "$clean_exits" ] || fail "s3drop did not exit 0 on stop"
ok "systemctl stop: the daemon exited 0"
set +e
stopped_status="$(in_box s3drop status --config /etc/s3drop/s3drop.toml)"
stopped_rc=$?
set -e
[ "$stopped_rc" = 1 ] || fail "status with the daemon stopped exited $stopped_rc, not 1: $stopped_status"
printf '%s' "$stopped_status" | grep -q "deep.bin (invalid_key)" \
  || fail "status with the daemon stopped does not list the failed file: $stopped_status"
ok "s3drop status with the daemon stopped lists the failed file from the ledger and exits 1"

# A ledger a failing disk damaged: s3drop exits 65 with one sentence, systemd does not
# restart it (RestartPreventExitStatus=65), and `s3drop ledger reset` lets it start again.
restarts="$(in_box systemctl show -p NRestarts --value s3drop.service)"
python3 -c 'import sys; p=sys.argv[1]; b=bytearray(open(p,"rb").read()); b[0:64]=bytes(64); open(p,"wb").write(b)' \
  "$root/var/lib/s3drop/ledger.redb"
timeout 60 nsenter -t "$sd_pid" -a systemctl start s3drop.service 2>/dev/null \
  && fail "s3drop started with a damaged ledger"
sleep 3
[ "$(in_box systemctl show -p ExecMainStatus --value s3drop.service)" = 65 ] \
  || fail "a damaged ledger did not exit 65: $(in_box systemctl show -p ExecMainStatus --value s3drop.service)"
[ "$(in_box systemctl show -p NRestarts --value s3drop.service)" = "$restarts" ] \
  || fail "systemd restarted s3drop over a damaged ledger"
[ "$(journal_count "s3drop ledger reset")" -ge 1 ] || fail "the journal does not name s3drop ledger reset"
in_box s3drop ledger reset --config /etc/s3drop/s3drop.toml > /dev/null || fail "s3drop ledger reset failed"
in_box systemctl reset-failed s3drop.service
timeout 60 nsenter -t "$sd_pid" -a systemctl start s3drop.service || fail "s3drop did not start after the reset"
ok "a damaged ledger: exit 65, no restart loop, the journal names \`s3drop ledger reset\`; after it s3drop starts"
timeout 60 nsenter -t "$sd_pid" -a systemctl stop s3drop.service || fail "stop after the reset failed"

cat > "$root/etc/systemd/system/s3drop.service.d/no-imds.conf" <<'UNIT'
[Service]
Environment=AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9
UNIT
in_box systemctl daemon-reload
t0=$(date +%s)
timeout 60 nsenter -t "$sd_pid" -a systemctl enable --now s3drop.service 2>/dev/null \
  || fail "systemctl enable --now did not return within 60 s with IMDS unreachable"
took=$(( $(date +%s) - t0 ))
[ "$(in_box systemctl is-active s3drop.service)" = active ] || fail "not active without IMDS"
wait_status "IMDSv2" 30 || fail "STATUS does not name the cause: $(status_text)"
ok "with IMDS unreachable, enable --now returned in ${took} s"
status_line="$(status_text)"
[ "${#status_line}" -le 200 ] || fail "StatusText is ${#status_line} characters: $status_line"
case "$status_line" in *"{"*) fail "StatusText carries a Debug structure: $status_line" ;; esac
case "$status_line" in *"Connection refused"*) ;; *) fail "StatusText does not name the cause: $status_line" ;; esac
ok "StatusText (${#status_line} characters): $status_line"
imds_warning() { in_box journalctl -u s3drop.service -p warning --no-pager -o cat | grep -F "no upload session yet" | tail -1; }
for _ in $(seq 50); do [ -n "$(imds_warning)" ] && break; sleep 0.2; done
case "$(imds_warning)" in
  *"Connection refused"*"fix: "*) ;;
  *) fail "journalctl -p warning does not show the IMDS warning with its cause and fix: $(imds_warning)" ;;
esac
case "$(imds_warning)" in *"{"*) fail "the warning carries a Debug structure: $(imds_warning)" ;; esac
ok "journalctl -p warning: $(imds_warning)"
# S3DROP_BOOT_RECORD=FILE keeps what an operator would read now: the whole journal of the
# unit and `systemctl status` (for a report; the checks above do not depend on it).
if [ -n "${S3DROP_BOOT_RECORD:-}" ]; then
  { echo '$ journalctl -u s3drop -o cat'; in_box journalctl -u s3drop.service --no-pager -o cat
    echo; echo '$ systemctl status s3drop'; in_box env SYSTEMD_COLORS=0 systemctl status --no-pager -l s3drop.service || true
  } > "$S3DROP_BOOT_RECORD" 2>&1
fi
timeout 60 nsenter -t "$sd_pid" -a systemctl stop s3drop.service || fail "stop without IMDS failed"
poweroff_box

# ==== 2 and 3. cloud-init ===========================================================================
# The .deb is served on 127.0.0.1, as a release asset would be.
mkdir -p "$work/www"
cp "$deb" "$work/www/s3drop.deb"
http_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "$http_port" > "$work/http.log" 2>&1 &
http_pid=$!
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$http_port/s3drop.deb" && break; sleep 0.1; done

# cloud-init with a NoCloud seed whose user-data is cloud-init/user-data.yaml rendered with
# ROLE (the upload role). The container shares the host's kernel and network: no network
# configuration, and only the modules the user-data needs (no growpart, resizefs,
# set-hostname, ssh, ...). The unit and the bootstrap's `s3drop check` reach the local AWS
# through the SDK's variables, as an instance reaches AWS.
cloud_prepare() { # ROLE OUT
  sed -e "s|\${PackageUrl}|http://127.0.0.1:$http_port/s3drop.deb|g" -e "s|\${Bucket}|$BUCKET|g" \
      -e "s|\${UploadRoleArn}|$1|g" -e "s|\${KeyPrefix}|{instance_id}/|g" \
      -e "s|\${StorageClass}|STANDARD|g" -e "s|\${SseLine}|# sse: the bucket's default|g" \
      -e "s|\${SseKmsKeyLine}|# sse_kms_key_id: none|g" \
      "$repo/cloud-init/user-data.yaml" > "$work/user-data"
  grep -q '\${' "$work/user-data" && fail "user-data still has template variables"
  cat > "$2" <<SH
rm -f /etc/systemd/system/cloud-init-local.service /etc/systemd/system/cloud-init.service \
  /etc/systemd/system/cloud-config.service /etc/systemd/system/cloud-final.service
rm -rf /var/lib/cloud
mkdir -p /var/lib/cloud/seed/nocloud /etc/cloud/cloud.cfg.d /etc/systemd/system/s3drop-boot.target.d
cat > /var/lib/cloud/seed/nocloud/meta-data <<'META'
instance-id: $INSTANCE_ID
local-hostname: s3drop-boot
META
cat > /var/lib/cloud/seed/nocloud/user-data <<'USERDATA'
$(cat "$work/user-data")
USERDATA
cat > /etc/cloud/cloud.cfg.d/99-s3drop-boot-test.cfg <<'CFG'
datasource_list: [ NoCloud, None ]
network: {config: disabled}
cloud_init_modules: [write-files]
cloud_config_modules: [runcmd]
cloud_final_modules: [scripts-user, final-message]
CFG
cat > /etc/systemd/system/s3drop-boot.target.d/cloud-init.conf <<'UNIT'
[Unit]
Wants=cloud-init-local.service cloud-init.service cloud-config.service cloud-final.service
UNIT
mkdir -p /etc/systemd/system/s3drop.service.d /etc/systemd/system/cloud-final.service.d
for unit in s3drop.service cloud-final.service; do
  cat > /etc/systemd/system/\$unit.d/local-aws.conf <<'UNIT'
[Service]
Environment=AWS_ENDPOINT_URL=$ENDPOINT
Environment=AWS_EC2_METADATA_SERVICE_ENDPOINT=$ENDPOINT
UNIT
done
SH
}

# Until cloud-final has run (its exit status), the whole boot bounded.
wait_cloud_final() {
  poll_state 900 "active|failed" in_box systemctl show -p ActiveState --value cloud-final.service
}

# on_console TEXT: waits up to 15 s for TEXT on the console. The unit's state can change
# before journald has forwarded its last lines there (seen once with both cores busy).
on_console() {
  for _ in $(seq 75); do
    grep -q "$1" "$console" && return 0
    sleep 0.2
  done
  return 1
}

cloud_prepare "$ROLE_ARN" "$work/prepare-cloud.sh"
say "boot 2: cloud-init runs the user-data"
t0=$(date +%s)
boot "$work/prepare-cloud.sh"
final="$(wait_cloud_final)" || fail "cloud-init's final stage did not finish within 180 s ($final)"
state="$(wait_booted 150)" || fail "the boot did not complete: $state"
[ "$final" = active ] || fail "cloud-final failed: $(grep s3drop-bootstrap "$console" | tail -3)"
ok "cloud-init ran the user-data in $(( $(date +%s) - t0 )) s; the boot completed ($state)"
in_box dpkg -s s3drop > /dev/null || fail "the package is not installed"
grep -q "bucket = \"$BUCKET\"" "$root/etc/s3drop/s3drop.toml" || fail "the config was not written"
[ "$(in_box systemctl is-enabled s3drop.service)" = enabled ] || fail "the unit is not enabled"
[ "$(in_box systemctl is-active s3drop.service)" = active ] || fail "the unit is not active"
ok "the package is installed, /etc/s3drop/s3drop.toml written, s3drop.service enabled and active"
on_console "✔ scope holds" && on_console "all checks passed" \
  && on_console "s3drop-bootstrap: done" || fail "s3drop check is not on the console"
ok "s3drop check printed on the console: $(grep -m1 '✔ scope holds' "$console")"
head -c 3000 /dev/urandom > "$work/cloud.bin"
produce cloud.bin "$work/cloud.bin"
wait_object "${PREFIX}cloud.bin" "$work/cloud.bin" 30 || fail "a file dropped after boot did not arrive"
ok "a file dropped after the cloud-init boot arrived byte-identical"
poweroff_box

cloud_prepare "${ROLE_ARN%/*}/no-such-role" "$work/prepare-cloud-broken.sh"
say "boot 3: cloud-init with an upload role that does not exist"
t0=$(date +%s)
boot "$work/prepare-cloud-broken.sh"
final="$(wait_cloud_final)" || fail "a failing check hung the boot ($final)"
state="$(wait_booted 150)" || fail "the boot did not complete: $state"
[ "$final" = failed ] || fail "cloud-final did not fail although the check failed"
on_console "✗ assume upload role" || fail "the broken link is not on the console"
on_console "s3drop-bootstrap: FAILED: s3drop check found a broken link" \
  || fail "the bootstrap's failure is not on the console"
ok "a failing check is loud on the console ($(grep -m1 '✗' "$console" | cut -c1-80)…) and the boot completed ($state) in $(( $(date +%s) - t0 )) s"
poweroff_box

echo "boot test: all passed in $(( $(date +%s) - started_at )) s"
