#!/usr/bin/env bash
# Stop what start-local-slurm.sh started, by pid only (daemons it found already running are left alone).
# Jobs are cancelled first: their slurmstepd processes would outlive slurmd.
# --purge also deletes state, spool, logs and the accounting database (job ids restart at 1).
set -uo pipefail
BASE=${SLURM_LOCAL_DIR:-/tmp/rewardtune-slurm}
RUN=$BASE/run
PURGE=0
[ "${1:-}" = --purge ] && PURGE=1

ours() {
  local pid; pid=$(cat "$2" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}
halt() {  # halt NAME PIDFILE
  if ! ours "$1" "$2"; then rm -f "$2"; return 0; fi
  local pid; pid=$(cat "$2")
  echo "[stop-local-slurm] stopping $1 (pid $pid)"
  kill "$pid" 2>/dev/null
  for _ in $(seq 60); do [ -d "/proc/$pid" ] || break; sleep 0.25; done
  if [ -d "/proc/$pid" ]; then
    echo "[stop-local-slurm] $1 (pid $pid) ignored SIGTERM; sending SIGKILL"
    kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$2"
}

if ours slurmctld "$RUN/slurmctld.pid"; then
  jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// }" ]; then
    echo "[stop-local-slurm] cancelling jobs $jobs"
    # shellcheck disable=SC2086
    scancel $jobs
    for _ in $(seq 60); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi
halt slurmd "$RUN/slurmd.pid"
halt slurmctld "$RUN/slurmctld.pid"
halt slurmdbd "$RUN/slurmdbd.pid"
if [ $PURGE = 1 ] && command -v mariadb >/dev/null && mariadb-admin ping >/dev/null 2>&1; then
  mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db"
fi
halt mariadbd "$RUN/mariadbd.pid"
halt munged "$RUN/munged.pid"
if [ $PURGE = 1 ]; then
  rm -rf "$BASE/state" "$BASE/spool" "$BASE/log" "$RUN"
  echo "[stop-local-slurm] purged $BASE"
fi
exit 0
