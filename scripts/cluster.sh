#!/usr/bin/env bash
# A simulated cluster on one machine: N "hosts", each a network namespace with its own
# address, hostname and NIC (eth0), joined through a switch (a bridge in a namespace of
# its own) by links shaped with tc tbf to a rate, in both directions. Nothing is created
# in the machine's own namespace and every address lies in the cluster's 10.213.0.0/24,
# which exists only inside its namespaces. docs/cluster.md says what it models and not.
#
#   scripts/cluster.sh [--name N] [--hosts H] [--rate R] up      create, or reshape/reuse
#   scripts/cluster.sh [--name N] run [--launch mpi|env|slurm] [--per-host K] -- CMD ARGS
#   scripts/cluster.sh [--name N] mpirun MPIRUN-ARGS             mpirun across the hosts
#   scripts/cluster.sh [--name N] exec HOST -- CMD ARGS          one command on one host
#   scripts/cluster.sh [--name N] status                         hosts, links, counters
#   scripts/cluster.sh [--name N] down                           remove it (--all: every one)
#
# run --launch mpi   (default) mpirun started on node0, daemons on the other hosts through
#                    an rsh agent that does `ip netns exec HOST`, Open MPI's TCP BTL only
#                    (btl tcp,self, pml ob1) on the cluster subnet: no shared memory
#                    between hosts (nor inside one).
# run --launch env   torchrun-style: one process per rank started on its host with RANK,
#                    WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR
#                    (node0's address, never loopback) and MASTER_PORT.
# run --launch slurm like srun without PMI: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
#                    SLURM_NODEID, SLURM_NNODES, plus MASTER_ADDR/MASTER_PORT as a batch
#                    script would export them; no RANK/WORLD_SIZE.
# run on a cluster that is not up brings one up for the run and removes it afterwards.
# When any rank fails, the others are stopped (as torchrun does) and run exits with the
# failing rank's status. Ranks keep the caller's environment (env/slurm launch); under
# mpirun, DDP_*, OMP_*, MKL_*, ATEN_*, TORCH_*, GLOO_*, NCCL_* and the names in
# CLUSTER_FORWARD are forwarded with -x, as on a real cluster where ssh starts clean.
#
# Settings (options win over the environment):
#   --name / CLUSTER_NAME      cluster name, [a-z0-9]{1,10} (default ddp); clusters of
#                              different names coexist (their addresses overlap, but in
#                              separate namespaces)
#   --hosts / CLUSTER_HOSTS    hosts, 1..32 (default 2)
#   --rate / CLUSTER_RATE      link rate in tc's units: 1gbit (default), 10gbit, 100mbit,
#                              or "none" for unshaped links
#   CLUSTER_MASTER_PORT        MASTER_PORT of the env/slurm launch (default 29500)
#   CLUSTER_TIMEOUT_S          bound on `run` (default none): ranks are stopped, exit 124
# Exit status 77 (and the reason on stderr) where network namespaces cannot be created
# (no root, a container without CAP_SYS_ADMIN/CAP_NET_ADMIN, no iproute2): the cluster
# ctest entries report Skipped on it. Needs root; installs iproute2 if it is missing.
set -euo pipefail

readonly kSubnet=10.213.0          # the cluster's /24; only inside its namespaces
readonly kStateBase=/run/ddp-cluster
readonly kSkip=77

name=${CLUSTER_NAME:-ddp}
hosts=${CLUSTER_HOSTS:-}
rate=${CLUSTER_RATE:-}
port=${CLUSTER_MASTER_PORT:-29500}

say() { echo "cluster.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }
skip() { say "cannot simulate a cluster here: $*"; exit $kSkip; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

while (($#)); do
  case "$1" in
    --name) name=${2:?--name needs a value}; shift 2 ;;
    --hosts) hosts=${2:?--hosts needs a value}; shift 2 ;;
    --rate) rate=${2:?--rate needs a value}; shift 2 ;;
    -h|--help) usage 0 ;;
    *) break ;;
  esac
done
(($#)) || usage 2
cmd=$1; shift

[[ $name =~ ^[a-z0-9]{1,10}$ ]] || die "--name '$name': use 1 to 10 of [a-z0-9]"
prefix="ddpc-$name"                 # every namespace of this cluster starts with it
state="$kStateBase/$name"
switch_ns="$prefix-sw"
host_ns() { echo "$prefix-node$1"; }
host_addr() { echo "$kSubnet.$(($1 + 1))"; }

# --- tools and permission ---------------------------------------------------------------
need_root() {
  [ "$(id -u)" -eq 0 ] || skip "network namespaces need root (running as uid $(id -u))"
}

ensure_tools() {
  need_root
  if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
    say "installing iproute2 (ip, tc)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2; } >/dev/null 2>&1 ||
      skip "iproute2 (ip, tc) is missing and could not be installed with apt-get"
  fi
  command -v unshare >/dev/null || skip "unshare (util-linux) is missing"
}

# Can this machine create a network namespace at all? Tried once with a scratch name.
probe_netns() {
  local probe="$prefix-probe$$" err
  if ! err=$(ip netns add "$probe" 2>&1); then
    skip "'ip netns add' is not permitted: ${err:-unknown error}"
  fi
  if ! err=$(ip netns exec "$probe" true 2>&1); then
    ip netns del "$probe" 2>/dev/null || true
    skip "'ip netns exec' is not permitted: ${err:-unknown error}"
  fi
  ip netns del "$probe"
}

# --- state ------------------------------------------------------------------------------
# $state/config holds "hosts=H rate=R"; $state/hostfile the mpirun hostfile; $state/rsh-agent
# the agent Open MPI calls instead of ssh.
is_up() {
  [ -f "$state/config" ] || return 1
  local h; h=$(sed -n 's/^hosts=//p' "$state/config")
  [ -n "$h" ] || return 1
  for ((i = 0; i < h; i++)); do
    [ -e "/run/netns/$(host_ns "$i")" ] || return 1
  done
  [ -e "/run/netns/$switch_ns" ]
}
config_of() { sed -n "s/^$1=//p" "$state/config"; }

# tbf: the bucket holds at least a GSO super-packet (64 KiB) and ~1 ms at the rate, so
# the shaper does not cap below the rate at HZ granularity; the queue holds 20 ms (a
# switch port's buffer), beyond which packets are dropped as a real port would.
shape() { # shape NS DEV RATE
  local ns=$1 dev=$2 r=$3
  if [ "$r" = none ]; then
    tc -n "$ns" qdisc del dev "$dev" root 2>/dev/null || true
    return
  fi
  local bps burst
  bps=$(rate_bps "$r")
  burst=$((bps / 8 / 1000))
  ((burst < 131072)) && burst=131072
  tc -n "$ns" qdisc replace dev "$dev" root tbf rate "$r" burst "$burst" latency 20ms
}

rate_bps() { # tc rate → bit/s (for the burst and for reports)
  local r=${1,,} n unit
  [[ $r =~ ^([0-9]+(\.[0-9]+)?)([kmgt]?)(bit|bps)$ ]] || die "rate '$1': write e.g. 1gbit, 10gbit, 500mbit"
  n=${BASH_REMATCH[1]}; unit=${BASH_REMATCH[3]}
  local mult=1
  case "$unit" in k) mult=1000 ;; m) mult=1000000 ;; g) mult=1000000000 ;; t) mult=1000000000000 ;; esac
  [ "${BASH_REMATCH[4]}" = bps ] && mult=$((mult * 8))   # tc: "bps" is bytes per second
  awk -v n="$n" -v m="$mult" 'BEGIN { printf "%.0f\n", n * m }'
}

reshape() { # every link of the cluster, both directions
  local h; h=$(config_of hosts)
  for ((i = 0; i < h; i++)); do
    shape "$(host_ns "$i")" eth0 "$1"
    shape "$switch_ns" "p$i" "$1"
  done
  sed -i "s/^rate=.*/rate=$1/" "$state/config"
}

write_agent() { # the rsh agent: "agent [opts] HOST CMD..." runs CMD on HOST like ssh would
  local h=$1 f="$state/rsh-agent"
  {
    echo "#!/bin/sh"
    echo "# Open MPI's rsh agent for cluster '$name' (scripts/cluster.sh): runs the command"
    echo "# in HOST's namespace and hostname with a clean environment, as ssh would."
    echo 'while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done'
    echo 'host=$1; shift'
    echo 'case "$host" in'
    for ((i = 0; i < h; i++)); do
      echo "  node$i|node$i.$name|$(host_addr "$i")) ns=$(host_ns "$i"); hn=node$i ;;"
    done
    echo '  *) echo "rsh-agent: unknown host $host" >&2; exit 255 ;;'
    echo 'esac'
    echo 'exec ip netns exec "$ns" unshare --uts -- env -i PATH="$PATH" HOME="${HOME:-/root}" \'
    echo '  ${LD_LIBRARY_PATH:+LD_LIBRARY_PATH="$LD_LIBRARY_PATH"} \'
    echo '  sh -c '"'"'echo "$0" > /proc/sys/kernel/hostname && exec sh -c "$1"'"'"' "$hn" "$*"'
  } >"$f"
  chmod +x "$f"
}

# --- up / down --------------------------------------------------------------------------
remove_all() { # every namespace, file and directory of this cluster, also half-made ones
  local ns pids
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$prefix-(sw|node[0-9]+|probe[0-9]+)$" || true); do
    # Processes still running on a host (a run that was killed) were started by us.
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      kill $pids 2>/dev/null || true
      sleep 0.5
      pids=$(ip netns pids "$ns" 2>/dev/null || true)
      [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
    fi
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf /etc/netns/"$prefix"-* "$state"
}

# IPv4 only: no IPv6 neighbour discovery on the links, so their byte counters show the
# job's traffic alone.
no_ipv6() {
  ip netns exec "$1" sh -c 'for f in /proc/sys/net/ipv6/conf/default/disable_ipv6 /proc/sys/net/ipv6/conf/all/disable_ipv6; do
    [ -w "$f" ] && echo 1 > "$f"; done; true'
}

create() { # create H RATE
  local h=$1 r=$2 ns
  mkdir -p "$state"
  ip netns add "$switch_ns"
  ip -n "$switch_ns" link set lo up
  no_ipv6 "$switch_ns"
  ip -n "$switch_ns" link add br0 type bridge
  ip -n "$switch_ns" link set br0 up
  local hosts_file
  hosts_file=$(printf '127.0.0.1\tlocalhost\n'; for ((i = 0; i < h; i++)); do
    printf '%s\tnode%d.%s node%d\n' "$(host_addr "$i")" "$i" "$name" "$i"; done)
  for ((i = 0; i < h; i++)); do
    ns=$(host_ns "$i")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    no_ipv6 "$ns"
    # Both ends are born in their namespaces: nothing appears in the machine's own.
    ip -n "$switch_ns" link add "p$i" type veth peer name eth0 netns "$ns"
    ip -n "$switch_ns" link set "p$i" master br0 up
    ip -n "$ns" addr add "$(host_addr "$i")/24" dev eth0
    ip -n "$ns" link set eth0 up
    # `ip netns exec` bind-mounts /etc/netns/NS/hosts over /etc/hosts: the hosts' names.
    mkdir -p "/etc/netns/$ns"
    echo "$hosts_file" >"/etc/netns/$ns/hosts"
  done
  printf 'hosts=%s\nrate=%s\n' "$h" "$r" >"$state/config"
  for ((i = 0; i < h; i++)); do echo "node$i slots=1"; done >"$state/hostfile"
  write_agent "$h"
  reshape "$r"
}

cmd_up() {
  local h=${hosts:-2} r=${rate:-1gbit}
  [[ $h =~ ^[0-9]+$ ]] && ((h >= 1 && h <= 32)) || die "--hosts '$h': 1 to 32"
  [ "$r" = none ] || rate_bps "$r" >/dev/null
  ensure_tools
  if is_up && [ "$(config_of hosts)" = "$h" ]; then
    if [ "$(config_of rate)" != "$r" ]; then
      reshape "$r"
      say "cluster '$name': $h hosts, links reshaped to $r"
    else
      say "cluster '$name' is already up: $h hosts, links $r"
    fi
    return 0
  fi
  probe_netns
  remove_all
  # A half-made cluster is removed, whatever failed.
  trap 'rc=$?; if ((rc != 0)); then say "up failed; removing what was made"; remove_all; fi' EXIT
  create "$h" "$r"
  trap - EXIT
  say "cluster '$name' up: $h hosts node0..node$((h - 1)) at $kSubnet.1-$h/24, links $r each way"
}

cmd_down() {
  need_root
  command -v ip >/dev/null || return 0
  if [ "${1:-}" = --all ]; then
    local n
    for n in $(ip netns list 2>/dev/null | awk '{print $1}' | sed -n 's/^ddpc-\([a-z0-9]*\)-sw$/\1/p' | sort -u); do
      "$0" --name "$n" down
    done
    return 0
  fi
  remove_all
  say "cluster '$name' down"
}

cmd_status() {
  is_up || { say "cluster '$name' is not up"; return 1; }
  local h; h=$(config_of hosts)
  echo "cluster '$name': $h hosts, links $(config_of rate) each way, state in $state"
  for ((i = 0; i < h; i++)); do
    local ns; ns=$(host_ns "$i")
    printf 'node%d  %-12s ns %-22s eth0 tx %s B rx %s B  %s\n' "$i" "$(host_addr "$i")" "$ns" \
      "$(ip netns exec "$ns" cat /sys/class/net/eth0/statistics/tx_bytes)" \
      "$(ip netns exec "$ns" cat /sys/class/net/eth0/statistics/rx_bytes)" \
      "$(tc -n "$ns" qdisc show dev eth0 | head -n 1)"
  done
}

# --- running commands -------------------------------------------------------------------
on_host() { # on_host I CMD...: CMD on host I, in its namespace and hostname
  local i=$1; shift
  ip netns exec "$(host_ns "$i")" unshare --uts -- \
    sh -c 'echo "$0" > /proc/sys/kernel/hostname && exec "$@"' "node$i" "$@"
}

cmd_exec() {
  is_up || die "cluster '$name' is not up (scripts/cluster.sh up)"
  local host=${1:?exec needs a host (node0..)}; shift
  [ "${1:-}" = -- ] && shift
  (($#)) || die "exec: no command"
  local i=${host#node}
  [[ $i =~ ^[0-9]+$ ]] && ((i < $(config_of hosts))) || die "exec: no host '$host' in cluster '$name'"
  on_host "$i" "$@"
}

mpirun_args() { # the options that make mpirun use the cluster and only its network
  local a=() v
  [[ " $* " =~ \ (-H|--host|-host|--hostfile|-hostfile|--machinefile|-machinefile)\  ]] || a+=(--hostfile "$state/hostfile")
  # Every host would bind its ranks from core 0 up, piling the hosts' ranks onto the same
  # cores of this one machine: no binding unless the caller asks for one.
  [[ " $* " =~ \ (--bind-to|-bind-to)\  ]] || a+=(--bind-to none)
  a+=(--mca plm rsh --mca plm_rsh_agent "$state/rsh-agent" --mca plm_rsh_no_tree_spawn 1
    --mca pml ob1 --mca btl tcp,self --mca osc pt2pt
    --mca btl_tcp_if_include "$kSubnet.0/24" --mca oob_tcp_if_include "$kSubnet.0/24")
  for v in $(compgen -e); do
    if [[ $v =~ ^(DDP_|OMP_|MKL_|ATEN_|TORCH_|GLOO_|NCCL_) ]] || [[ " ${CLUSTER_FORWARD:-} " == *" $v "* ]]; then
      a+=(-x "$v")
    fi
  done
  printf '%s\n' "${a[@]}"
}

cmd_mpirun() {
  is_up || die "cluster '$name' is not up (scripts/cluster.sh up)"
  command -v mpirun >/dev/null || die "mpirun not found (scripts/setup.sh installs Open MPI)"
  local extra=()
  mapfile -t extra < <(mpirun_args "$@")
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  on_host 0 mpirun "${extra[@]}" "$@"
}

child_pids=()
stop_children() { # each rank was started in a session of its own: end its whole group
  local p any=0
  for p in "${child_pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null && any=1; done
  ((any)) || return 0
  sleep 1
  for p in "${child_pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
}

cmd_run() {
  local launch=mpi per_host=1
  while (($#)); do
    case "$1" in
      --launch) launch=${2:?}; shift 2 ;;
      --per-host) per_host=${2:?}; shift 2 ;;
      --) shift; break ;;
      *) break ;;
    esac
  done
  (($#)) || die "run: no command (scripts/cluster.sh run [--launch mpi|env|slurm] -- CMD ARGS)"
  [[ $per_host =~ ^[1-9][0-9]*$ ]] || die "--per-host '$per_host': a positive integer"
  case "$launch" in mpi|env|slurm) ;; *) die "--launch '$launch': mpi, env or slurm" ;; esac

  ephemeral=0
  if is_up && [ -n "$hosts" ] && [ "$hosts" != "$(config_of hosts)" ]; then
    die "cluster '$name' is up with $(config_of hosts) hosts, not $hosts: scripts/cluster.sh --name $name down first"
  fi
  if ! is_up; then
    say "cluster '$name' is not up: bringing it up for this run only"
    cmd_up
    ephemeral=1
  elif [ -n "$rate" ] && [ "$rate" != "$(config_of rate)" ]; then
    reshape "$rate"
  fi
  timed_out=0
  trap 'rc=$?; stop_children; if ((ephemeral)); then remove_all; say "cluster '"'$name'"' removed"; fi; exit $rc' EXIT
  trap 'say "interrupted"; exit 130' INT TERM
  trap 'timed_out=1; say "run took longer than CLUSTER_TIMEOUT_S=${CLUSTER_TIMEOUT_S} s: stopping the ranks"; stop_children' USR1

  local h world
  h=$(config_of hosts)
  world=$((h * per_host))
  say "run: $world ranks on $h hosts ($per_host per host), launch $launch, links $(config_of rate)"
  if [ "$launch" = mpi ]; then
    local host_list
    host_list=$(for ((i = 0; i < h; i++)); do printf 'node%d:%d,' "$i" "$per_host"; done)
    setsid "$0" --name "$name" mpirun --host "${host_list%,}" --map-by "ppr:$per_host:node" -np "$world" "$@" &
    child_pids+=($!)
  else
    local i j rank vars
    for ((i = 0; i < h; i++)); do
      for ((j = 0; j < per_host; j++)); do
        rank=$((i * per_host + j))
        if [ "$launch" = env ]; then
          vars=(RANK=$rank WORLD_SIZE=$world LOCAL_RANK=$j LOCAL_WORLD_SIZE=$per_host NODE_RANK=$i GROUP_RANK=$i)
        else
          vars=(SLURM_PROCID=$rank SLURM_NTASKS=$world SLURM_LOCALID=$j SLURM_NODEID=$i SLURM_NNODES=$h
                SLURM_NTASKS_PER_NODE=$per_host SLURMD_NODENAME=node$i)
        fi
        # MASTER_* as torchrun or a Slurm batch script sets them; the *_SOCKET_IFNAME
        # keep gloo and NCCL on the cluster's NIC, as one sets them on a real cluster.
        setsid ip netns exec "$(host_ns "$i")" unshare --uts -- \
          sh -c 'echo "$0" > /proc/sys/kernel/hostname && exec "$@"' "node$i" \
          env "${vars[@]}" MASTER_ADDR="$(host_addr 0)" MASTER_PORT="$port" \
          GLOO_SOCKET_IFNAME=eth0 NCCL_SOCKET_IFNAME=eth0 "$@" &
        child_pids+=($!)
      done
    done
  fi
  if [ -n "${CLUSTER_TIMEOUT_S:-}" ]; then
    { sleep "$CLUSTER_TIMEOUT_S"; kill -USR1 $$ 2>/dev/null; } &
    local watchdog=$!
  fi

  # Wait like torchrun: the first rank to fail stops the others. (Polled: bash reaps
  # exited children itself and keeps their status for `wait PID`.)
  local rc=0 prc p rest pending=("${child_pids[@]}")
  while ((${#pending[@]})); do
    rest=()
    for p in "${pending[@]}"; do
      if kill -0 "$p" 2>/dev/null; then
        rest+=("$p")
        continue
      fi
      if wait "$p"; then prc=0; else prc=$?; fi
      if ((prc != 0 && rc == 0)); then
        rc=$prc
        if ((!timed_out)); then
          say "a rank (pid $p) exited with status $prc: stopping the others"
          stop_children
        fi
      fi
    done
    pending=("${rest[@]}")
    ((${#pending[@]} == 0)) || sleep 0.2
  done
  [ -z "${watchdog:-}" ] || kill "$watchdog" 2>/dev/null || true
  ((timed_out)) && rc=124
  return $rc
}

case "$cmd" in
  up) cmd_up "$@" ;;
  down) cmd_down "$@" ;;
  status) cmd_status "$@" ;;
  exec) cmd_exec "$@" ;;
  mpirun) cmd_mpirun "$@" ;;
  run) cmd_run "$@" ;;
  *) say "unknown command '$cmd'"; usage 2 ;;
esac
