#!/usr/bin/env bash
# Build the Debian test image offline, once: localtest/debian-systemd:bookworm.
#
# A Debian bookworm rootfs made by debootstrap from this machine's apt mirror (Docker Hub is not
# reachable), with systemd as /sbin/init and Python 3.11 + venv, imported with `docker import`.
# Two kinds of test use it (../shared/docs/test-infra.md, sections 3 and 6):
#   - systemd as PID 1 in a container (tests/infra.py: SystemdContainer), for the unit files;
#   - the BASE of the sidecar Dockerfile (`docker build --build-arg BASE=...`), since no public
#     python image can be pulled here.
# One image for both: a second debootstrap would cost another ~50 s; systemd adds ~30 MB.
#
# Idempotent and cached by a content stamp: the image carries the label
# org.batch-agent.image-stamp = sha256 of the recipe (suite, packages, import options, REV).
# A run that finds an image with the same stamp does nothing (~0.1 s); a changed recipe rebuilds.
# One flock around the build, so concurrent test sessions build it once.
# Not part of infra-up.sh's default path: only tests that need it pay for it (the fixture in
# tests/infra.py calls this script), so the usual infra-up stays a few seconds.
#
# Env knobs: INFRA_DIR (default /tmp/batch-agent-infra), IMAGES_MIRROR (default: the first
# Debian URI in the machine's apt sources). Prints the image name on its last line.
set -Eeuo pipefail

INFRA_DIR=${INFRA_DIR:-/tmp/batch-agent-infra}
IMAGE=localtest/debian-systemd:bookworm
SUITE=bookworm
# ca-certificates: the agent talks TLS to Azure Storage in real use; passwd (useradd) is in minbase.
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,ca-certificates
IMPORT_OPTS=(
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  -c 'ENV container=docker'
  -c 'CMD ["/sbin/init"]'
)
REV=1 # bump to force a rebuild with the same recipe
STAMP=$(printf '%s\n' "$SUITE" "$PACKAGES" "${IMPORT_OPTS[@]}" "$REV" | sha256sum | cut -c1-16)
LOGS=$INFRA_DIR/logs
LOG=$LOGS/images.log
mkdir -p "$INFRA_DIR" "$LOGS"
export DEBIAN_FRONTEND=noninteractive

now_us() { local t=${EPOCHREALTIME/./}; echo "${t#0}"; }
secs() { local d=$(( $(now_us) - $1 )); printf '%d.%01d' $(( d / 1000000 )) $(( d % 1000000 / 100000 )); }
T0=$(now_us)
die() {
  printf '[images] FAILED: %s\n' "$*" >&2
  [ -s "$LOG" ] && tail -n 15 "$LOG" | cut -c1-300 | sed 's/^/    /' >&2
  exit 1
}
trap 'die "line $LINENO (exit $?)"' ERR

have_image() {
  [ "$(docker image inspect -f '{{index .Config.Labels "org.batch-agent.image-stamp"}}' "$IMAGE" 2>/dev/null)" = "$STAMP" ]
}

docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "no Docker engine answers (run scripts/infra-up.sh)"
if have_image; then
  printf '[images] %-40s %6ss\n' "$IMAGE present (stamp $STAMP)" "$(secs "$T0")"
  echo "$IMAGE"
  exit 0
fi

exec 8>"$INFRA_DIR/.images.lock"
flock -w 900 8 || die "could not take $INFRA_DIR/.images.lock within 900s"
if have_image; then # another run built it while we waited
  printf '[images] %-40s %6ss\n' "$IMAGE built by a concurrent run" "$(secs "$T0")"
  echo "$IMAGE"
  exit 0
fi

: >"$LOG"
if ! command -v debootstrap >/dev/null; then
  { apt-get update && apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 debootstrap; } \
    >>"$LOG" 2>&1 || die "apt-get install debootstrap failed"
fi
apt_mirrors() {
  cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '$1 == "URIs:" {print $2}' || true
  awk '$1 == "deb" {print ($2 ~ /^\[/ ? $3 : $2)}' /etc/apt/sources.list 2>/dev/null || true
}
MIRROR=${IMAGES_MIRROR:-$(apt_mirrors | awk '!/security/ {print; exit}')}
[ -n "$MIRROR" ] || die "no Debian mirror in the apt sources; set IMAGES_MIRROR"

ROOTFS=$INFRA_DIR/rootfs-debian-systemd
rm -rf "$ROOTFS"
t=$(now_us)
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >>"$LOG" 2>&1 \
  || die "debootstrap $SUITE from $MIRROR failed"
printf '[images] %-40s %6ss\n' "debootstrap ($MIRROR)" "$(secs "$t")"
# Smaller and quieter: no apt lists or caches in the image; no getty or udev inside a container.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb
for unit in getty.target systemd-udevd.service systemd-udev-trigger.service systemd-logind.service \
  systemd-resolved.service systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer; do
  ln -sf /dev/null "$ROOTFS/etc/systemd/system/$unit"
done
: >"$ROOTFS/etc/machine-id"

t=$(now_us)
tar --numeric-owner -C "$ROOTFS" -c . | docker import "${IMPORT_OPTS[@]}" \
  -c "LABEL org.batch-agent.image-stamp=$STAMP" - "$IMAGE" >>"$LOG" 2>&1 || die "docker import failed"
rm -rf "$ROOTFS"
printf '[images] %-40s %6ss\n' "docker import" "$(secs "$t")"
printf '[images] %-40s %6ss\n' "$IMAGE built (stamp $STAMP)" "$(secs "$T0")"
echo "$IMAGE"
