#!/usr/bin/env bash
# Stop servers that scripts/infra-up.sh started, found by their pid files only (never by name).
# Usage: infra-down.sh [azurite] [registry] [dockerd]   (default: all three)
# Leaves installed packages, images, the Azurite install and registry data in place.
set -uo pipefail

INFRA_DIR=${INFRA_DIR:-/tmp/batch-agent-infra}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(azurite registry dockerd)

# expected command-line fragment per server: guards against a recycled pid
expect() {
  case $1 in
    azurite) echo azurite ;;
    registry) echo docker-registry ;;
    dockerd) echo dockerd ;;
    *) echo "[infra-down] unknown server '$1'" >&2; return 1 ;;
  esac
}

now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }

rc=0
for name in "${names[@]}"; do
  want=$(expect "$name") || { rc=1; continue; }
  f=$INFRA_DIR/$name.pid
  [ -s "$f" ] || continue
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$want"; then
    t0=$(now_us)
    kill "$pid" 2>/dev/null || true
    # Azurite and the registry drain for ~2 s; dockerd stops its containers first.
    limit=$([ "$name" = dockerd ] && echo 30 || echo 10)
    deadline=$(( t0 + limit * 1000000 ))
    while kill -0 "$pid" 2>/dev/null && [ "$(now_us)" -lt "$deadline" ]; do sleep 0.05; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "[infra-down] $name (pid $pid) ignored SIGTERM for ${limit}s; sending SIGKILL" >&2
      kill -9 "$pid" 2>/dev/null || true
    fi
    d=$(( $(now_us) - t0 ))
    printf '[infra-down] stopped %-9s (pid %s) in %d.%01ds\n' "$name" "$pid" $(( d / 1000000 )) $(( d % 1000000 / 100000 ))
  fi
  rm -f "$f"
done
exit $rc
