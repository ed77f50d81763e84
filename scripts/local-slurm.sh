#!/usr/bin/env bash
# A single-node Slurm cluster on this host, for testing the `cluster` profile against a real scheduler:
# munged + slurmctld + slurmd, one partition `debug` with this host's CPUs, no accounting database.
#
#   bash scripts/local-slurm.sh start DIR   # writes DIR/slurm.conf, starts the daemons, waits until the node is idle
#   bash scripts/local-slurm.sh stop DIR
#
# The configuration goes to /etc/slurm/slurm.conf, where every Slurm command (also srun inside a job) looks
# first; the script refuses to replace a slurm.conf it did not write. Needs root and the Debian packages slurmctld,
# slurmd, slurm-client and munge (scripts/system-deps.sh installs them in CI). Not for production clusters.
set -euo pipefail
cmd="${1:?usage: local-slurm.sh start|stop DIR}"
dir="$(mkdir -p "${2:?usage: local-slurm.sh start|stop DIR}" && cd "$2" && pwd)"
conf=/etc/slurm/slurm.conf
marker="# written by local-slurm.sh for $dir"
host="$(hostname -s)"

stop() {
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    sleep 1
}

if [ "$cmd" = stop ]; then
    stop
    exit 0
fi
[ "$cmd" = start ] || { echo "usage: local-slurm.sh start|stop DIR" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "local-slurm.sh: needs root (slurmd runs jobs as their user)" >&2; exit 1; }
for exe in munged slurmctld slurmd sbatch; do
    command -v "$exe" >/dev/null || { echo "local-slurm.sh: '$exe' not found; install slurmctld slurmd slurm-client munge" >&2; exit 1; }
done

if [ -f "$conf" ] && ! grep -q "^# written by local-slurm.sh" "$conf"; then
    echo "local-slurm.sh: $conf exists and was not written by this script; not replacing it" >&2
    exit 1
fi
mkdir -p /etc/slurm
cpus="$(nproc)"
mem_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
mkdir -p "$dir/state" "$dir/spool"
cat > "$conf" <<EOF
$marker
ClusterName=benchlocal
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

# munge: one daemon per host; reuse a running one
if ! pgrep -x munged >/dev/null; then
    [ -f /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; chmod 400 /etc/munge/munge.key; }
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    munged --force
fi
stop
slurmctld -f "$conf"
slurmd -f "$conf"
for _ in $(seq 60); do
    state="$(sinfo -h -N -o '%t' 2>/dev/null | head -1 || true)"
    if [ "$state" = idle ] || [ "$state" = mix ]; then
        echo "local Slurm up: node $host ($cpus CPUs, $mem_mb MB), config $conf"
        exit 0
    fi
    sleep 0.5
done
echo "local-slurm.sh: node did not become idle; see $dir/slurmctld.log and $dir/slurmd.log" >&2
sinfo -N >&2 || true
exit 1
