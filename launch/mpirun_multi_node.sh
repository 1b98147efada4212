#!/usr/bin/env bash
# ddtrain across several nodes with mpirun and a hostfile, one rank per GPU on every node,
# started by ddtrain-launch (Open MPI, MPICH or Intel MPI, detected).
#   HOSTFILE=hosts bash launch/mpirun_multi_node.sh [Hydra overrides...]
#   HOSTFILE=hosts IFACE=ib0 bash launch/mpirun_multi_node.sh model=resnet model.depth=50 trainer.precision=bf16
# HOSTFILE=F   the nodes and their slots (default: ./hosts); see launch/hostfile.example
#              (Open MPI: "node01 slots=8"; MPICH / Intel MPI: "node01:8")
# NP=N         total ranks (default: the sum of the hostfile's slot counts)
# IFACE=NAME   network interface for NCCL's and Gloo's sockets (sets NCCL_SOCKET_IFNAME and
#              GLOO_SOCKET_IFNAME unless already set); InfiniBand itself is NCCL_IB_HCA's business
# MPI_ARGS     launcher flags, e.g. "--mca btl_tcp_if_include eth0" to keep Open MPI's own TCP
#              traffic on one interface
# RUN_DIR, LAUNCH_ARGS: as in launch/mpirun_single_node.sh
# Every NCCL_* and DDTRAIN_* variable set here (NCCL_DEBUG=INFO, NCCL_IB_HCA=mlx5_0 ...) is
# exported to every rank on every node by ddtrain-launch. Needs passwordless ssh to the nodes
# and the same venv path on all of them (shared file system).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -x "$repo/.venv/bin/ddtrain-launch" ]]; then
  PATH="$repo/.venv/bin:$PATH"
fi

HOSTFILE="${HOSTFILE:-hosts}"
if [[ ! -f "$HOSTFILE" ]]; then
  echo "mpirun_multi_node.sh: error: hostfile '$HOSTFILE' not found; fix: HOSTFILE=path (see launch/hostfile.example)" >&2
  exit 2
fi

# Sum of "slots=N" (Open MPI) or "host:N" (MPICH) over the hostfile; exit 3 if a host line has
# no count, because Open MPI would then use that node's core count, which we cannot see from here.
sum_slots() {
  awk '{ sub(/#.*/, "") }
       NF == 0 { next }
       { n = 0
         for (i = 2; i <= NF; i++) if ($i ~ /^slots=[0-9]+$/) { split($i, kv, "="); n = kv[2] }
         if (n == 0 && $1 ~ /:[0-9]+$/) { m = split($1, hp, ":"); n = hp[m] }
         if (n == 0) missing = 1
         total += n }
       END { if (missing) exit 3; print total }' "$1"
}

if [[ -z "${NP:-}" ]]; then
  if ! NP="$(sum_slots "$HOSTFILE")"; then
    echo "mpirun_multi_node.sh: error: a line of '$HOSTFILE' has no slot count; fix: write 'node slots=8' (or node:8), or set NP" >&2
    exit 2
  fi
fi

if [[ -n "${IFACE:-}" ]]; then
  export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-$IFACE}"
  export GLOO_SOCKET_IFNAME="${GLOO_SOCKET_IFNAME:-$IFACE}"
fi

args=("$@")
if [[ -n "${RUN_DIR:-}" ]]; then
  args+=("hydra.run.dir=$RUN_DIR")
fi
launch=(ddtrain-launch -n "$NP" --hostfile "$HOSTFILE")
if [[ -n "${MPI_ARGS:-}" ]]; then
  launch+=("--mpi-args=$MPI_ARGS")
fi
# LAUNCH_ARGS is a list of options: split on spaces on purpose.
# shellcheck disable=SC2086
exec "${launch[@]}" ${LAUNCH_ARGS:-} -- "${args[@]}"
