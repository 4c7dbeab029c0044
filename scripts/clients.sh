#!/usr/bin/env bash
# Install the real Azure Batch clients the API tests drive, each in its own venv:
#
#   $CLIENTS_DIR/sdk15   azure-batch 15.1.0 (+ azure-core): the current TypeSpec SDK
#   $CLIENTS_DIR/sdk14   azure-batch 14.2.0 (msrest):       the old AutoRest SDK
#   $CLIENTS_DIR/azcli   azure-cli 2.91.0 (pins azure-batch 15.0.0b1): the `az batch` CLI
#
# CLIENTS_DIR defaults to /opt/batch-agent-clients. Idempotent: a venv whose stamp matches the
# wanted requirements is left alone, so a second run takes well under a second. Each venv is
# stamped only once pip succeeded, so an interrupted install is rebuilt from scratch
# on the next run. The three installs run in
# parallel (they are mostly downloads). A lock (flock) serialises concurrent runs.
#
# Prints one line per client, "name path", and exits non-zero if any install failed (its log
# is printed).
set -uo pipefail

DIR=${CLIENTS_DIR:-/opt/batch-agent-clients}
PYTHON=${PYTHON:-python3}
mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9

declare -A REQS=(
  [sdk15]="azure-batch==15.1.0 azure-core>=1.30"
  [sdk14]="azure-batch==14.2.0 msrest>=0.7.1"
  [azcli]="azure-cli==2.91.0"
)

install_one() { # install_one NAME
  local name=$1 want venv tmp
  want="$("$PYTHON" -c 'import sys; print(sys.version.split()[0])') ${REQS[$name]}"
  venv=$DIR/$name
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  # a venv's scripts carry its absolute path, so it is built where it lives; the stamp is written
  # last, so a half-built venv (no stamp) is removed and rebuilt on the next run
  rm -rf "$venv"
  # shellcheck disable=SC2086
  if "$PYTHON" -m venv "$venv" >"$DIR/$name.log" 2>&1 \
     && "$venv/bin/python" -m pip install -q --disable-pip-version-check ${REQS[$name]} >>"$DIR/$name.log" 2>&1; then
    echo "$want" >"$venv/.stamp"
    return 0
  fi
  return 1
}

start=$EPOCHREALTIME
pids=()
for name in sdk15 sdk14 azcli; do
  install_one "$name" &
  pids+=("$!:$name")
done
rc=0
for entry in "${pids[@]}"; do
  pid=${entry%%:*} name=${entry#*:}
  if ! wait "$pid"; then
    rc=1
    echo "clients.sh: installing $name failed; log $DIR/$name.log:" >&2
    tail -n 30 "$DIR/$name.log" >&2
  fi
done
for name in sdk15 sdk14 azcli; do
  [ -f "$DIR/$name/.stamp" ] && echo "$name $DIR/$name"
done
python3 -c "import sys; print(f'clients.sh: done in {float(sys.argv[2]) - float(sys.argv[1]):.1f}s', file=sys.stderr)" "$start" "$EPOCHREALTIME"
exit $rc
