#!/usr/bin/env bash
# The one test command: install the project into .venv, bring up the real servers
# (scripts/infra-up.sh), run ruff, mypy, import-linter and pytest, then stop only the servers
# this run started. Extra arguments go to pytest.
#
#   bash scripts/test.sh                      # everything (what CI runs)
#   SKIP_LINT=1 bash scripts/test.sh -k blob  # fast iteration: no ruff/mypy/import-linter
#   KEEP_INFRA=1 bash scripts/test.sh         # leave the servers running afterwards
#
# Exits non-zero if any step fails; pytest's "no tests collected" (exit 5) counts as a failure.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export INFRA_DIR=${INFRA_DIR:-/tmp/batch-agent-infra}
VENV=.venv
WORK=$(mktemp -d)
export INFRA_STARTED_FILE=$WORK/started
: >"$INFRA_STARTED_FILE"

now_us() { local t=${EPOCHREALTIME/./}; echo "$t"; }
secs() { local d=$(( $(now_us) - $1 )); printf '%d.%01d' $(( d / 1000000 )) $(( d % 1000000 / 100000 )); }
T0=$(now_us)
SUMMARY=()
FAILED=0
record() { # record NAME RC START [SECONDS]
  local status=ok
  [ "$2" = 0 ] || { status="FAILED (exit $2)"; FAILED=1; }
  SUMMARY+=("$(printf '%-14s %-18s %6ss' "$1" "$status" "${4:-$(secs "$3")}")")
}
banner() { printf '\n==> %s\n' "$*"; }

teardown() {
  local started
  started=$(sort -u "$INFRA_STARTED_FILE" 2>/dev/null | tr '\n' ' ')
  if [ -n "$started" ]; then
    if [ "${KEEP_INFRA:-0}" = 1 ]; then
      banner "KEEP_INFRA=1: leaving running what this run started: $started"
    else
      banner "stopping what this run started: $started"
      # shellcheck disable=SC2086
      bash scripts/infra-down.sh $started
    fi
  fi
  rm -rf "$WORK"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

finish() {
  banner "summary"
  printf '  %s\n' "${SUMMARY[@]}"
  printf '  %-14s %-18s %6ss\n' total "$([ $FAILED = 0 ] && echo ok || echo FAILED)" "$(secs "$T0")"
  exit $FAILED
}

# ------------------------------------------------------------ setup: pip || infra-up in parallel
# infra-up is mostly apt/npm downloads, pip and clients.sh mostly PyPI downloads: run them side by side.
banner "setup: pip install -e '.[test]' and scripts/infra-up.sh (in parallel)"
t=$(now_us)
{
  bash scripts/infra-up.sh >"$WORK/infra.log" 2>&1 </dev/null
  rc=$?
  secs "$t" >"$WORK/infra.secs"
  exit $rc
} &
INFRA_PID=$!
# The real Batch clients the API tests drive (azure-batch 15.1 / 14.2, azure-cli): own venvs.
t_clients=$(now_us)
{
  bash scripts/clients.sh >"$WORK/clients.log" 2>&1 </dev/null
  rc=$?
  secs "$t_clients" >"$WORK/clients.secs"
  exit $rc
} &
CLIENTS_PID=$!

t_pip=$(now_us)
pip_rc=0
# Skip the install when pyproject.toml is unchanged since the last successful one (editable install).
STAMP=$VENV/.batch-agent-installed
want_stamp=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" >"$WORK/pip.log" 2>&1 || pip_rc=$?
fi
if [ $pip_rc = 0 ] && [ "$(cat "$STAMP" 2>/dev/null)" != "$want_stamp" ]; then
  "$VENV/bin/python" -m pip install -q -e '.[test]' >>"$WORK/pip.log" 2>&1 || pip_rc=$?
  [ $pip_rc != 0 ] || echo "$want_stamp" >"$STAMP"
  pip_what="installed"
else
  pip_what="up to date (pyproject.toml unchanged)"
fi
if [ $pip_rc = 0 ]; then
  echo "[pip] $pip_what in $(secs "$t_pip")s"
else
  echo "[pip] FAILED (exit $pip_rc); log:"
  grep -v "is ignored: it is neither" "$WORK/pip.log" | tail -n 40 | sed 's/^/    /'
fi
record pip $pip_rc "$t_pip"

infra_rc=0
wait $INFRA_PID || infra_rc=$?
cat "$WORK/infra.log"
record infra-up $infra_rc "$t" "$(cat "$WORK/infra.secs" 2>/dev/null)"
clients_rc=0
wait $CLIENTS_PID || clients_rc=$?
sed 's/^/[clients] /' "$WORK/clients.log"
record clients $clients_rc "$t_clients" "$(cat "$WORK/clients.secs" 2>/dev/null)"

if [ $pip_rc != 0 ] || [ $infra_rc != 0 ] || [ $clients_rc != 0 ]; then finish; fi
# shellcheck disable=SC1091
. "$INFRA_DIR/env.sh"
# The Debian test image (systemd + Python; ~50 s cold, 0.1 s when present) builds while the linters
# and the first tests run; the tests that need it wait on the script's lock (tests/infra.py).
bash scripts/images.sh >"$WORK/images.log" 2>&1 </dev/null &
IMAGES_PID=$!

# ------------------------------------------------------------ checks (each runs even if one before failed)
run_step() { # run_step NAME CMD...
  local name=$1; shift
  banner "$name: $*"
  local t rc=0
  t=$(now_us)
  "$@" || rc=$?
  record "$name" $rc "$t"
  return 0
}

if [ "${SKIP_LINT:-0}" = 1 ]; then
  banner "SKIP_LINT=1: skipping ruff, mypy, import-linter"
else
  run_step ruff "$VENV/bin/ruff" check --output-format=concise agent tests
  run_step mypy "$VENV/bin/mypy"
  run_step import-linter "$VENV/bin/lint-imports" --no-logo
fi

banner "pytest -q $*"
t=$(now_us)
rc=0
"$VENV/bin/python" -m pytest -q "$@" || rc=$?
if [ $rc = 5 ]; then
  echo "pytest collected no tests: treated as a failure"
fi
record pytest $rc "$t"
wait $IMAGES_PID 2>/dev/null || { echo "[images] scripts/images.sh failed:"; tail -n 20 "$WORK/images.log"; }

finish
