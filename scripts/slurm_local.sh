#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, with accounting (for tests and for trying
# `--launcher slurm`; docs/CLUSTER.md):
#
#   sudo scripts/slurm_local.sh start    # install Debian's packages if missing, configure, start; then
#                                        # print the run_all command that asks for no GPUs (--slurm-cpu-only)
#   sudo scripts/slurm_local.sh status   # which daemons run; sinfo
#   sudo scripts/slurm_local.sh stop     # end exactly the daemons `start` started (their PID files)
#
# Everything it writes (configuration, MariaDB data, spool, state, logs, PID files) lives under
# MAST_SLURM_DIR (default /var/tmp/mast-slurm). Clients find the cluster through
# SLURM_CONF=$MAST_SLURM_DIR/etc/slurm.conf (`start` also links /etc/slurm/slurm.conf to it when
# that file does not exist). Daemons listen on localhost only: slurmctld 6817, slurmd 6818,
# slurmdbd 6819; MariaDB has no network port (a Unix socket in the folder).
# Accounting is not optional: submitit reads job states through sacct, and without slurmdbd every
# state reads UNKNOWN, so a cancelled or timed-out job could not be told from a finished one.
set -euo pipefail

DIR="${MAST_SLURM_DIR:-/var/tmp/mast-slurm}"
CLUSTER=mast-local
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
export SLURM_CONF="$DIR/etc/slurm.conf"
export MYSQL_UNIX_PORT="$DIR/mysql/mysqld.sock"   # slurmdbd's MySQL client connects through it
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)   # start order; stop goes in reverse
TRY_RUN_ALL="python transfer/run_all.py --suite demo --tasks knn --ckpt runs/pretrain/demo_mast_s0/backbone.pth --launcher slurm --slurm-cpu-only"

die() { echo "slurm_local: $*" >&2; exit 1; }
now() { date +%s.%N; }
pidfile() { echo "$DIR/run/$1.pid"; }

# The PID in $1's PID file if that process still runs the daemon $1 (not a reused PID).
running_pid() {
  local f pid comm
  f="$(pidfile "$1")"
  [ -s "$f" ] || return 1
  pid="$(tr -dc 0-9 < "$f")"
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
  comm="$(cat "/proc/$pid/comm")"
  case "$1" in mariadbd) [[ "$comm" == mariadbd || "$comm" == mysqld ]] ;; *) [ "$comm" = "$1" ] ;; esac || return 1
  echo "$pid"
}

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "packages missing (${missing[*]}); run as root to install them with apt-get"
  command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and no apt-get (expected Debian/Ubuntu)"
  local t0 policy_added=0
  t0=$(now)
  # Keep the packages' own init scripts from starting system-wide daemons: this script starts its own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && policy_added=1
  fi
  echo "slurm_local: installing ${missing[*]} (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$policy_added" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
  echo "slurm_local: installed in $(awk "BEGIN{printf \"%.1f\", $(now)-$t0}") s"
}

write_config() {
  local host cpus mem
  host="$(hostname -s)"
  cpus="$(nproc --all)"
  mem="$(awk '/MemTotal/ {printf "%d", $2/1024*0.9}' /proc/meminfo)"   # MiB, headroom for the OS
  mkdir -p "$DIR"/{etc,run,log,ctld,spool,munge,mysql}
  chmod 755 "$DIR"
  cat > "$SLURM_CONF" <<EOF
# Written by scripts/slurm_local.sh: one node ($host), localhost only, accounting through slurmdbd.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStoragePass=$DIR/munge/munge.socket
JobCompType=jobcomp/none
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=5
OverTimeLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$DIR/etc/slurmdbd.conf" <<EOF
# Written by scripts/slurm_local.sh
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$(pidfile slurmdbd)
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$(db_password)
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/etc/slurmdbd.conf"
  if [ ! -e /etc/slurm/slurm.conf ] && [ -d /etc/slurm ]; then ln -s "$SLURM_CONF" /etc/slurm/slurm.conf; fi
}

db_password() {
  local f="$DIR/etc/db_password"
  [ -s "$f" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -dc A-Za-z0-9 > "$f")
  cat "$f"
}

start_munge() {
  running_pid munged >/dev/null && return 0
  if [ ! -s "$DIR/munge/munge.key" ]; then
    (umask 077; head -c 1024 /dev/urandom > "$DIR/munge/munge.key")
  fi
  chown -R munge:munge "$DIR/munge"
  chmod 755 "$DIR/munge"   # munged: the socket's folder must be searchable by all
  chmod 400 "$DIR/munge/munge.key"
  touch "$(pidfile munged)" "$DIR/log/munged.log"
  chown munge "$(pidfile munged)" "$DIR/log/munged.log"
  runuser -u munge -- munged --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
    --pid-file="$(pidfile munged)" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
  wait_for "munged" 10 test -S "$DIR/munge/munge.socket"
}

start_mariadb() {
  local sql
  running_pid mariadbd >/dev/null && return 0
  mkdir -p "$DIR/mysql/data"
  chown -R mysql:mysql "$DIR/mysql"
  touch "$(pidfile mariadbd)" "$DIR/log/mariadb.log" && chown mysql "$(pidfile mariadbd)" "$DIR/log/mariadb.log"
  if [ ! -d "$DIR/mysql/data/mysql" ]; then
    mariadb-install-db --no-defaults --user=mysql --datadir="$DIR/mysql/data" --skip-test-db \
      --auth-root-authentication-method=socket > "$DIR/log/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed; see $DIR/log/mariadb-install.log"
  fi
  nohup mariadbd --no-defaults --user=mysql --datadir="$DIR/mysql/data" --socket="$MYSQL_UNIX_PORT" \
    --pid-file="$(pidfile mariadbd)" --skip-networking --log-error="$DIR/log/mariadb.log" \
    --innodb-buffer-pool-size=64M > /dev/null 2>&1 &
  wait_for "mariadbd" 60 mariadb --no-defaults -S "$MYSQL_UNIX_PORT" -u root -e "SELECT 1"
  sql="CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$(db_password)';
       GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  mariadb --no-defaults -S "$MYSQL_UNIX_PORT" -u root -e "$sql"
}

start_slurm() {
  running_pid slurmdbd >/dev/null || slurmdbd
  wait_for "slurmdbd" 60 sacctmgr -n list cluster
  sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
  running_pid slurmctld >/dev/null || slurmctld
  running_pid slurmd >/dev/null || slurmd
  wait_for "slurmd (node idle)" 60 sh -c "sinfo -h -o %T | grep -q idle"
  wait_for "sacct" 30 sacct -n -X -S now
}

# wait_for NAME SECONDS COMMAND...: retry COMMAND every 0.2 s; a one-line error naming the log after.
wait_for() {
  local name="$1" limit="$2" t0
  shift 2
  t0=$(date +%s)
  until "$@" >/dev/null 2>&1; do
    [ $(( $(date +%s) - t0 )) -lt "$limit" ] || die "$name did not answer within $limit s; see $DIR/log/"
    sleep 0.2
  done
}

cmd_start() {
  local t0 t1
  t0=$(now)
  install_packages
  t1=$(now)
  [ "$(id -u)" -eq 0 ] || die "start needs root (daemons run as root, munge as munge, MariaDB as mysql)"
  write_config
  start_munge
  start_mariadb
  start_slurm
  echo "slurm_local: cluster $CLUSTER up in $(awk "BEGIN{printf \"%.1f\", $(now)-$t1}") s" \
       "(install $(awk "BEGIN{printf \"%.1f\", $t1-$t0}") s); export SLURM_CONF=$SLURM_CONF"
  try_it
}

# The node offers SLURM no GPUs (no Gres in slurm.conf): a job asking for one is refused with "Invalid
# generic resource (gres) specification". These are the commands that ask for none (README "On a cluster").
try_it() {
  echo "slurm_local: this node has no GPUs for SLURM: ask for none. From the checkout, after make demo:"
  echo "  export SLURM_CONF=$SLURM_CONF"
  echo "  $TRY_RUN_ALL"
  echo "  (pretraining: python -m mast.pretrain --launcher slurm without --gpus-per-node)"
}

cmd_stop() {
  local i name pid n
  for (( i=${#DAEMONS[@]}-1; i>=0; i-- )); do
    name="${DAEMONS[$i]}"
    pid="$(running_pid "$name")" || { rm -f "$(pidfile "$name")"; continue; }
    kill -TERM "$pid"
    for n in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    [ -d "/proc/$pid" ] && kill -KILL "$pid"
    rm -f "$(pidfile "$name")"
    echo "slurm_local: stopped $name ($pid)"
  done
  if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$SLURM_CONF" ]; then rm -f /etc/slurm/slurm.conf; fi
}

cmd_status() {
  local name pid up=0
  for name in "${DAEMONS[@]}"; do
    if pid="$(running_pid "$name")"; then echo "$name: running ($pid)"; up=$((up + 1)); else echo "$name: stopped"; fi
  done
  [ "$up" -eq ${#DAEMONS[@]} ] && sinfo
  [ "$up" -eq ${#DAEMONS[@]} ]
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) die "usage: $0 start|stop|status (folder: MAST_SLURM_DIR, default /var/tmp/mast-slurm)" ;;
esac
