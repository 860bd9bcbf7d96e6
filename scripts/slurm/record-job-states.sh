#!/usr/bin/env bash
# Record what sacct and squeue print (the exact commands rewardtune.launch.slurm.job_states runs) for jobs in each
# state on a real cluster, into tests/launch/data/recorded/: the launcher's parsing is tested against these files
# without a cluster. Run on a cluster with accounting, e.g. after scripts/slurm/start-local-slurm.sh.
#   bash scripts/slurm/record-job-states.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-$(dirname "$0")/../../tests/launch/data/recorded}
mkdir -p "$OUT"
sub() { sbatch --parsable -o /dev/null -e /dev/null "$@" | cut -d';' -f1; }
record() {  # record NAME JOBID
  sacct -j "$2" -X -n -P -o JobID,State > "$OUT/$1.sacct.txt"
  squeue -h -j "$2" -o "%i|%T" > "$OUT/$1.squeue.txt" 2>/dev/null || true
  echo "$2" > "$OUT/$1.jobid.txt"
  echo "[record] $1 (job $2): sacct '$(tr '\n' ' ' < "$OUT/$1.sacct.txt")' squeue '$(tr '\n' ' ' < "$OUT/$1.squeue.txt")'"
}
wait_state() {  # wait_state JOBID STATE...
  local id=$1; shift
  for _ in $(seq 120); do
    local s; s=$(sacct -j "$id" -X -n -P -o State | head -1 | cut -d' ' -f1)
    for want in "$@"; do [ "$s" = "$want" ] && return 0; done
    sleep 0.5
  done
  echo "job $id never reached $*" >&2; return 1
}
done_ok=$(sub --wrap "true");            wait_state "$done_ok" COMPLETED;  record completed "$done_ok"
failed=$(sub --wrap "exit 3");           wait_state "$failed" FAILED;      record failed "$failed"
running=$(sub --wrap "sleep 120");       wait_state "$running" RUNNING;    record running "$running"
held=$(sub --hold --wrap "true");        wait_state "$held" PENDING;       record pending "$held"
array=$(sub --array=0-1 --wrap "sleep 120"); wait_state "${array}_0" RUNNING; sleep 1; record array-running "$array"
scancel "$running";                      wait_state "$running" CANCELLED;  record cancelled "$running"
scontrol requeue "$array" 2>/dev/null || true; sleep 2;                    record array-requeued "$array"
scancel "$held" "$array" 2>/dev/null || true
