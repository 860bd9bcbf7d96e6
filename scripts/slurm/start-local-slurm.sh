#!/usr/bin/env bash
# Install (once) and start a one-node SLURM cluster on 127.0.0.1 for rewardtune's `slurm` tests:
# munge, MariaDB + slurmdbd (job states in sacct, so submitit sees CANCELLED/FAILED), slurmctld, slurmd.
# Idempotent: packages already installed and daemons already running are left alone.
#
# Exit codes: 0 cluster up; 77 cannot run here (not root, no apt-get) - tests read it as "skip";
#             anything else is a real failure (see the logs under $SLURM_LOCAL_DIR/log).
#
# Knobs (environment):
#   SLURM_LOCAL_DIR   state, spool, logs, pid files            (default /tmp/rewardtune-slurm)
#   SLURM_LOCAL_CPUS  CPUs the node advertises; may exceed the hardware so that small test jobs run side by
#                     side                                       (default: max(nproc, 8))
set -euo pipefail

BASE=${SLURM_LOCAL_DIR:-/tmp/rewardtune-slurm}
NPROC=$(nproc)
CPUS=${SLURM_LOCAL_CPUS:-$(( NPROC > 8 ? NPROC : 8 ))}
RUN=$BASE/run
LOG=$BASE/log
NODE=localhost
SKIP=77

say()  { echo "[start-local-slurm $(date +%T)] $*"; }
fail() { echo "[start-local-slurm] ERROR: $*" >&2; exit 1; }
skip() { echo "[start-local-slurm] SKIP: $*" >&2; exit $SKIP; }

# ours NAME PIDFILE: the pid file names a live process whose command is NAME
ours() {
  local pid; pid=$(cat "$2" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}
# until_ok SECONDS WHAT CMD...: poll CMD every 0.25 s
until_ok() {
  local tries=$(( $1 * 4 )) what=$2; shift 2
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  fail "$what did not come up within $1 s (logs: $LOG)"
}

[ "$(id -u)" = 0 ] || skip "needs root to install and run the SLURM daemons (uid $(id -u))"

# ------------------------------------------------------------------------------------------ packages
want=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
need=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || skip "SLURM packages missing (${need[*]}) and no apt-get to install them"
  say "installing ${need[*]}"
  # Do not let the packages start their own services: this script runs the daemons itself.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q || fail "apt-get update failed"
  apt-get install -y -q --no-install-recommends "${need[@]}" || fail "apt-get install ${need[*]} failed"
fi

# ------------------------------------------------------------------------------------------ config
mkdir -p "$BASE/state" "$BASE/spool" "$RUN" "$LOG" /etc/slurm
MEM=$(/usr/sbin/slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
MEM=${MEM:-1024}

# slurmctld and srun bind to what `hostname` resolves to when NoInAddrAny is set: only set it when that
# is a loopback address, otherwise listen on all interfaces (munge still authenticates every message).
ADDR=$(getent ahostsv4 "$(hostname)" 2>/dev/null | awk 'NR==1{print $1}' || true)
if [[ "$ADDR" == 127.* ]]; then
  CTL_ADDR=$ADDR
  COMM="CommunicationParameters=NoInAddrAny,NoCtldInAddrAny"
else
  CTL_ADDR=127.0.0.1
  COMM="# '$(hostname)' does not resolve to 127.x, so the daemons listen on all interfaces"
  say "note: '$(hostname)' resolves to '${ADDR:-nothing}'; add '127.0.0.1 $(hostname)' to /etc/hosts to keep SLURM on loopback"
fi

cat > "$BASE/slurm.conf.next" <<CONF
# written by rewardtune scripts/slurm/start-local-slurm.sh
ClusterName=rewardtune-local
SlurmctldHost=localhost($CTL_ADDR)
SlurmctldPort=6817
SlurmdPort=6818
$COMM
AuthType=auth/munge
CredType=cred/munge
# A requeued job may not start again before its credential expires (default 120 s): 10 s keeps the
# preemption test short.
AuthInfo=cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# No cgroups: containers rarely allow them.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
changed=0
cmp -s "$BASE/slurm.conf.next" /etc/slurm/slurm.conf || changed=1
mv "$BASE/slurm.conf.next" /etc/slurm/slurm.conf
chmod 644 /etc/slurm/slurm.conf

(
  umask 077
  cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=rewardtune-local
StorageLoc=slurm_acct_db
CONF
)
chmod 600 /etc/slurm/slurmdbd.conf

if [ "$changed" = 1 ]; then
  for d in slurmd slurmctld; do
    if ours $d "$RUN/$d.pid"; then
      say "slurm.conf changed: stopping $d to restart it"
      kill "$(cat "$RUN/$d.pid")"
      for _ in $(seq 60); do ours $d "$RUN/$d.pid" || break; sleep 0.25; done
    fi
  done
fi

# ------------------------------------------------------------------------------------------ munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "munged is running"
else
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 700 /etc/munge
  chmod 600 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 755 /run/munge
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged
  cp /run/munge/munged.pid "$RUN/munged.pid"     # the stop script stops only what we started
  until_ok 10 munged sh -c 'munge -n | unmunge'
fi

# ------------------------------------------------------------------------------------------ MariaDB + slurmdbd
if mariadb-admin ping >/dev/null 2>&1; then
  say "MariaDB is running"
else
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOG/mariadb-install.log" 2>&1
  mkdir -p /run/mysqld
  chown mysql:mysql /run/mysqld
  say "starting mariadbd (unix socket only)"
  nohup /usr/sbin/mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \
    --pid-file=/run/mysqld/mysqld.pid >>"$LOG/mariadbd.log" 2>&1 </dev/null &
  echo $! > "$RUN/mariadbd.pid"
  until_ok 60 MariaDB mariadb-admin ping
fi
mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'rewardtune-local';
  ALTER USER 'slurm'@'localhost' IDENTIFIED BY 'rewardtune-local';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
if ours slurmdbd "$RUN/slurmdbd.pid"; then
  say "slurmdbd is running"
else
  say "starting slurmdbd"
  /usr/sbin/slurmdbd
  until_ok 30 slurmdbd sacctmgr -n list cluster
fi

# ------------------------------------------------------------------------------------------ slurmctld + slurmd
if ours slurmctld "$RUN/slurmctld.pid"; then
  say "slurmctld is running"
else
  say "starting slurmctld"
  /usr/sbin/slurmctld -i          # -i: ignore unreadable state left by an older run
fi
until_ok 30 slurmctld sh -c 'scontrol ping | grep -q "is UP"'
if ours slurmd "$RUN/slurmd.pid"; then
  say "slurmd is running"
else
  say "starting slurmd"
  /usr/sbin/slurmd -N "$NODE"
fi

state=unknown
for _ in $(seq 120); do
  state=$(sinfo -h -n "$NODE" -o '%T' 2>/dev/null || true)
  case "$state" in
    idle|mixed|allocated|completing) break ;;
    *drain*|down*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
case "$state" in
  idle|mixed|allocated|completing) ;;
  *) fail "node $NODE is '$state' (logs: $LOG)" ;;
esac
say "cluster up: $(sinfo -h -o '%P %a nodes=%D %T cpus=%c' | tr '\n' ' ')"
