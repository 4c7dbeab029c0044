#!/usr/bin/env bash
# Bring up the real servers the test suite runs against, on 127.0.0.1 only:
#   - a Docker engine (dockerd, started here unless one already answers),
#   - offline-built test images: localtest/busybox:full and localtest/busybox:entrypoint,
#   - a private registry with bcrypt basic auth on 127.0.0.1:5000 holding test/busybox:full,
#   - Azurite (blob 10000, queue 10001, table 10002).
# Then writes $INFRA_DIR/env.sh with the addresses and credentials.
#
# Idempotent: a second run only checks facts and takes seconds. Safe to run concurrently
# (one flock around the whole script). Debian 12, root. Recipe and measurements:
# ../shared/docs/test-infra.md.
#
# Env knobs: INFRA_DIR (default /tmp/batch-agent-infra); INFRA_STARTED_FILE, if set, gets one
# line per server this run started (scripts/test.sh uses it to stop only those);
# INFRA_REGISTRY_PORT (5000) and INFRA_AZURITE_PORT (10000; queue +1, table +2) for a second
# stack beside the usual one (tests read the addresses from env.sh).
set -Eeuo pipefail

INFRA_DIR=${INFRA_DIR:-/tmp/batch-agent-infra}
AZURITE_VERSION=3.37.0
REG_ADDR=127.0.0.1:${INFRA_REGISTRY_PORT:-5000}
AZ_PORT=${INFRA_AZURITE_PORT:-10000}
AZ_QPORT=$(( AZ_PORT + 1 ))
AZ_TPORT=$(( AZ_PORT + 2 ))
REG_USER=testuser
REG_PASS=testpass
TEST_IMAGE=localtest/busybox:full
ENTRYPOINT_IMAGE=localtest/busybox:entrypoint
REGISTRY_IMAGE=$REG_ADDR/test/busybox:full
# Bump when the image recipe below changes: images with another revision label are rebuilt.
IMAGE_REV=1
AZURITE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
APT_PACKAGES=(docker.io busybox-static docker-registry apache2-utils curl)

LOGS=$INFRA_DIR/logs
mkdir -p "$INFRA_DIR" "$LOGS"
export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- helpers
now_us() { local t=${EPOCHREALTIME/./}; echo "${t#0}"; }
T0=$(now_us); T=$T0
STEP="start"; STEP_LOG=""
say() { printf '[infra] %s\n' "$*"; }
secs() { local d=$(( $(now_us) - $1 )); printf '%d.%01d' $(( d / 1000000 )) $(( d % 1000000 / 100000 )); }
lap() { printf '[infra] %-44s %6ss\n' "$1" "$(secs "$T")"; T=$(now_us); }
step() { STEP=$1; STEP_LOG=${2:-}; }

die() {
  printf '\n[infra] FAILED: %s\n' "$*" >&2
  if [ -n "$STEP_LOG" ] && [ -s "$STEP_LOG" ]; then
    printf '[infra] last lines of %s:\n' "$STEP_LOG" >&2
    tail -n 15 "$STEP_LOG" | cut -c1-300 | sed 's/^/    /' >&2
  fi
  exit 1
}
on_err() { die "step '$STEP' failed (line $1, exit $2)"; }
trap 'on_err $LINENO $?' ERR

NPM_PID=""
cleanup() {
  # An npm install still running in the background after a failure would race the next run.
  if [ -n "$NPM_PID" ] && kill -0 "$NPM_PID" 2>/dev/null; then kill "$NPM_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

started() { [ -z "${INFRA_STARTED_FILE:-}" ] || echo "$1" >>"$INFRA_STARTED_FILE"; }

pid_alive() { local f="$INFRA_DIR/$1.pid"; [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }

# start_bg NAME CMD... : new session, all fds redirected (so a caller that captures our
# output is not held open), pid file holds CMD's own pid (bash -c execs it).
start_bg() {
  local name=$1; shift
  STEP_LOG=$LOGS/$name.log
  rm -f "$INFRA_DIR/$name.pid"
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$INFRA_DIR/$name.pid" "$@" \
    >"$LOGS/$name.log" 2>&1 </dev/null 9>&- &
  local deadline=$(( $(now_us) + 5000000 ))
  until [ -s "$INFRA_DIR/$name.pid" ]; do
    [ "$(now_us)" -lt "$deadline" ] || die "$name did not write its pid file"
    sleep 0.01
  done
  started "$name"
}

# wait_ready NAME SECONDS CHECK... : poll CHECK until it succeeds; fail at once if NAME's
# process dies, or at the deadline.
wait_ready() {
  local name=$1 limit=$2; shift 2
  local deadline=$(( $(now_us) + limit * 1000000 ))
  until "$@" >/dev/null 2>&1; do
    pid_alive "$name" || die "$name exited before it was ready"
    [ "$(now_us)" -lt "$deadline" ] || die "$name not ready after ${limit}s"
    sleep 0.05
  done
}

http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$@" || true; }

# ---------------------------------------------------------------- lock
# Every long-lived child gets 9>&- : an inherited fd would hold the lock for the child's life.
LOCK=$INFRA_DIR/.infra-up.lock
exec 9>"$LOCK"
if ! flock -n 9; then
  say "another infra-up is running; waiting for it"
  flock -w 900 9 || die "could not take $LOCK within 900s"
fi

# ---------------------------------------------------------------- 0. npm (in parallel with the rest)
AZ_DIR=$INFRA_DIR/azurite
AZ_STAMP=$AZ_DIR/.installed-$AZURITE_VERSION
AZ_BIN=$AZ_DIR/node_modules/.bin/azurite
start_npm() {
  command -v npm >/dev/null || die "npm not found (node >= 20 is needed for Azurite $AZURITE_VERSION)"
  rm -f "$AZ_STAMP"
  npm install --prefix "$AZ_DIR" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" \
    >"$LOGS/npm.log" 2>&1 </dev/null 9>&- &
  NPM_PID=$!
}
NEED_NPM=0
[ -f "$AZ_STAMP" ] && [ -x "$AZ_BIN" ] || NEED_NPM=1
# Without npm on the machine, apt installs it first and npm starts after apt.
if [ $NEED_NPM = 1 ] && command -v npm >/dev/null; then start_npm; fi

# ---------------------------------------------------------------- 1. apt
step "apt" "$LOGS/apt.log"
wanted=("${APT_PACKAGES[@]}")
command -v npm >/dev/null || wanted+=(nodejs npm)
missing=()
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "apt: installing ${missing[*]}"
  apt-get update >"$LOGS/apt.log" 2>&1 || die "apt-get update failed"
  apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" \
    >>"$LOGS/apt.log" 2>&1 || die "apt-get install ${missing[*]} failed"
  lap "apt-get update + install (${#missing[@]} packages)"
else
  lap "apt packages already installed"
fi
if [ $NEED_NPM = 1 ] && [ -z "$NPM_PID" ]; then start_npm; fi

# ---------------------------------------------------------------- 2. dockerd
step "dockerd"
if docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
  lap "docker engine already answering"
else
  if ! pid_alive dockerd; then start_bg dockerd dockerd; fi
  wait_ready dockerd 60 docker version --format '{{.Server.Version}}'
  lap "dockerd started"
fi

# ---------------------------------------------------------------- 3. test images (offline)
image_rev() { docker image inspect -f '{{index .Config.Labels "org.batch-agent.test-rev"}}' "$1" 2>/dev/null || true; }

# make_rootfs DIR ORIGIN: busybox-static with every applet linked, users root/taskuser/nobody.
make_rootfs() {
  local r=$1
  rm -rf "$r"
  mkdir -p "$r/bin" "$r/usr/bin" "$r/etc" "$r/tmp" "$r/root" "$r/home/taskuser" "$r/var/tmp"
  cp /bin/busybox "$r/bin/busybox"
  local a
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"; done
  ln -s ../../bin/busybox "$r/usr/bin/env"
  cat >"$r/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
taskuser:x:1000:1000:taskuser:/home/taskuser:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/sh
EOF
  cat >"$r/etc/group" <<'EOF'
root:x:0:
taskuser:x:1000:
nogroup:x:65534:
EOF
  echo "$2" >"$r/etc/localtest-origin"
  chmod 700 "$r/root"
  chown 1000:1000 "$r/home/taskuser"
  chmod 1777 "$r/tmp" "$r/var/tmp"
}
import_rootfs() { # import_rootfs DIR TAG
  tar --numeric-owner -C "$1" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["sh"]' -c "LABEL org.batch-agent.test-rev=$IMAGE_REV" - "$2" >>"$LOGS/images.log"
}

step "images" "$LOGS/images.log"
BUILT_BASE=0
BUILT_ANY=0
if [ "$(image_rev "$TEST_IMAGE")" != "$IMAGE_REV" ]; then
  make_rootfs "$INFRA_DIR/rootfs" local
  import_rootfs "$INFRA_DIR/rootfs" "$TEST_IMAGE"
  BUILT_BASE=1
  BUILT_ANY=1
fi
if [ $BUILT_BASE = 1 ] || [ "$(image_rev "$ENTRYPOINT_IMAGE")" != "$IMAGE_REV" ]; then
  docker build -q -t "$ENTRYPOINT_IMAGE" - >>"$LOGS/images.log" 2>&1 <<EOF
FROM $TEST_IMAGE
WORKDIR /imagewd
LABEL org.batch-agent.test-rev=$IMAGE_REV
ENTRYPOINT ["echo", "from-entrypoint"]
EOF
  BUILT_ANY=1
fi
if [ $BUILT_ANY = 1 ]; then lap "test images built"; else lap "test images present"; fi

# ---------------------------------------------------------------- 4. registry
step "registry"
REG_DIR=$INFRA_DIR/registry
reg_ours() { # answers 401 without credentials and 200 with ours
  [ "$(http_code "http://$REG_ADDR/v2/")" = 401 ] &&
    [ "$(http_code -u "$REG_USER:$REG_PASS" "http://$REG_ADDR/v2/")" = 200 ]
}
if reg_ours; then
  lap "registry already answering"
else
  if ! pid_alive registry; then
    code=$(http_code "http://$REG_ADDR/v2/")
    [ "$code" = 000 ] || die "something else answers on $REG_ADDR (HTTP $code); free the port (ss -ltnp) or set INFRA_REGISTRY_PORT"
    mkdir -p "$REG_DIR/data"
    htpasswd -Bbn "$REG_USER" "$REG_PASS" >"$REG_DIR/htpasswd"
    cat >"$REG_DIR/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REG_DIR/data
  delete:
    enabled: true
http:
  addr: $REG_ADDR
auth:
  htpasswd:
    realm: basic-realm
    path: $REG_DIR/htpasswd
EOF
    start_bg registry docker-registry serve "$REG_DIR/config.yml"
  fi
  wait_ready registry 30 reg_ours
  lap "registry started"
fi

# The registry copy is its own import (same rootfs, /etc/localtest-origin says "registry"), so
# its layer is not in the engine once its tag is removed: a pull really downloads.
step "push" "$LOGS/push.log"
reg_has_image() {
  [ "$(cat "$REG_DIR/pushed-rev" 2>/dev/null)" = "$IMAGE_REV" ] &&
    [ "$(http_code -u "$REG_USER:$REG_PASS" \
      -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
      "http://$REG_ADDR/v2/test/busybox/manifests/full")" = 200 ]
}
if reg_has_image; then
  lap "registry image present"
else
  make_rootfs "$INFRA_DIR/rootfs-registry" registry
  import_rootfs "$INFRA_DIR/rootfs-registry" "$REGISTRY_IMAGE"
  DOCKER_CONFIG=$(mktemp -d)
  export DOCKER_CONFIG # keeps the login out of ~/.docker
  {
    echo "$REG_PASS" | docker login "$REG_ADDR" -u "$REG_USER" --password-stdin
    docker push "$REGISTRY_IMAGE"
  } >"$LOGS/push.log" 2>&1 || { rm -rf "$DOCKER_CONFIG"; die "docker push $REGISTRY_IMAGE failed"; }
  rm -rf "$DOCKER_CONFIG"
  unset DOCKER_CONFIG
  docker rmi "$REGISTRY_IMAGE" >>"$LOGS/push.log" 2>&1
  echo "$IMAGE_REV" >"$REG_DIR/pushed-rev"
  lap "registry image pushed, local copy removed"
fi

# ---------------------------------------------------------------- 5. Azurite
step "npm" "$LOGS/npm.log"
if [ -n "$NPM_PID" ]; then
  t_wait=$(now_us)
  wait "$NPM_PID" || { NPM_PID=""; die "npm install azurite@$AZURITE_VERSION failed"; }
  NPM_PID=""
  [ -x "$AZ_BIN" ] || die "npm finished but $AZ_BIN is missing"
  touch "$AZ_STAMP"
  lap "npm install azurite (waited $(secs "$t_wait")s here)"
else
  lap "azurite $AZURITE_VERSION already installed"
fi

step "azurite"
az_ready() {
  [ "$(http_code "http://127.0.0.1:$AZ_PORT/devstoreaccount1?comp=list")" = 403 ] &&
    [ "$(http_code "http://127.0.0.1:$AZ_QPORT/devstoreaccount1?comp=list")" = 403 ] &&
    [ "$(http_code "http://127.0.0.1:$AZ_TPORT/devstoreaccount1/Tables")" != 000 ]
}
if az_ready; then
  lap "azurite already answering"
else
  if ! pid_alive azurite; then
    for port in $AZ_PORT $AZ_QPORT $AZ_TPORT; do
      code=$(http_code "http://127.0.0.1:$port/")
      [ "$code" = 000 ] || die "port $port answers (HTTP $code) but not as Azurite; free it (ss -ltnp) or set INFRA_AZURITE_PORT"
    done
    rm -rf "$INFRA_DIR/azurite-data"
    mkdir -p "$INFRA_DIR/azurite-data"
    start_bg azurite "$AZ_BIN" \
      --blobHost 127.0.0.1 --blobPort $AZ_PORT --queueHost 127.0.0.1 --queuePort $AZ_QPORT \
      --tableHost 127.0.0.1 --tablePort $AZ_TPORT --location "$INFRA_DIR/azurite-data" \
      --silent --disableTelemetry --skipApiVersionCheck
  fi
  wait_ready azurite 60 az_ready
  lap "azurite started"
fi

# ---------------------------------------------------------------- 6. env.sh
step "env.sh"
BLOB=http://127.0.0.1:$AZ_PORT/devstoreaccount1
QUEUE=http://127.0.0.1:$AZ_QPORT/devstoreaccount1
TABLE=http://127.0.0.1:$AZ_TPORT/devstoreaccount1
cat >"$INFRA_DIR/env.sh.tmp" <<EOF
# Written by scripts/infra-up.sh. Test-only credentials for local emulators.
export INFRA_DIR='$INFRA_DIR'
export AZURITE_ACCOUNT='devstoreaccount1'
export AZURITE_KEY='$AZURITE_KEY'
export AZURITE_BLOB_URL='$BLOB'
export AZURITE_QUEUE_URL='$QUEUE'
export AZURITE_TABLE_URL='$TABLE'
export AZURITE_CONNECTION_STRING='DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$AZURITE_KEY;BlobEndpoint=$BLOB;QueueEndpoint=$QUEUE;TableEndpoint=$TABLE;'
export TEST_REGISTRY='$REG_ADDR'
export TEST_REGISTRY_USER='$REG_USER'
export TEST_REGISTRY_PASSWORD='$REG_PASS'
export TEST_IMAGE='$TEST_IMAGE'
export TEST_ENTRYPOINT_IMAGE='$ENTRYPOINT_IMAGE'
export TEST_REGISTRY_IMAGE='$REGISTRY_IMAGE'
EOF
mv "$INFRA_DIR/env.sh.tmp" "$INFRA_DIR/env.sh"
printf '[infra] %-44s %6ss\n' "ready (total)" "$(secs "$T0")"
say "source $INFRA_DIR/env.sh"
