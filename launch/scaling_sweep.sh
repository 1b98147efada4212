#!/usr/bin/env bash
# A scaling sweep: ddtrain at several world sizes, one result per size.
#   bash launch/scaling_sweep.sh [Hydra overrides...]
#   SIZES="1 2 4 8" bash launch/scaling_sweep.sh model=gpt data.batch_size=16
#   MODE=loop SIZES="1 2" bash launch/scaling_sweep.sh model=mlp trainer.steps=50
# MODE=study (default) runs ddtrain-scale once: interleaved repeats at each size in SIZES, the
#   performance model, and the report in OUT: scaling.csv, scaling.json, scaling.png, tb/,
#   runs/<mode>-n<N>-r<k>/ (see README "Scaling studies"). Inside a Slurm allocation set
#   LAUNCHER=srun; across nodes with mpirun set HOSTFILE.
# MODE=loop runs one plain ddtrain job per size (ddtrain-launch -n N); each writes OUT/n<N>/
#   (metrics.jsonl, train.log, model.pt), then one line per size is printed: median samples/s
#   over the steps after the first and the efficiency against the first size. Per-rank batch
#   stays fixed (weak scaling).
# SIZES="1 2"        world sizes (default: 1 2)
# OUT=DIR            output directory (default: outputs/sweep-<date>-<time>)
# LAUNCHER=mpirun|srun, HOSTFILE=F   study mode: how ddtrain-scale starts the workers
# LAUNCH_ARGS        loop mode: more ddtrain-launch options (e.g. "--hostfile hosts --mpi=mpich")
# DRY_RUN=1          print the commands instead of running them (loop mode: the mpirun lines,
#                    from ddtrain-launch --dry-run)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -x "$repo/.venv/bin/ddtrain-launch" ]]; then
  PATH="$repo/.venv/bin:$PATH"
fi

MODE="${MODE:-study}"
SIZES="${SIZES:-1 2}"
OUT="${OUT:-outputs/sweep-$(date +%Y-%m-%d_%H-%M-%S)}"
read -r -a sizes <<< "$SIZES"

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

case "$MODE" in
  study)
    list="$(IFS=,; echo "${sizes[*]}")"
    cmd=(ddtrain-scale "scale.world_sizes=[$list]" "scale.launcher=${LAUNCHER:-mpirun}" "hydra.run.dir=$OUT")
    if [[ -n "${HOSTFILE:-}" ]]; then
      cmd+=("scale.hostfile=$HOSTFILE")
    fi
    run "${cmd[@]}" "$@"
    ;;
  loop)
    dry=()
    if [[ "${DRY_RUN:-0}" == 1 ]]; then dry=(--dry-run); fi
    for n in "${sizes[@]}"; do
      # LAUNCH_ARGS is a list of options: split on spaces on purpose.
      # shellcheck disable=SC2086
      ddtrain-launch -n "$n" "${dry[@]}" ${LAUNCH_ARGS:-} -- "hydra.run.dir=$OUT/n$n" "$@"
    done
    if [[ "${DRY_RUN:-0}" != 1 ]]; then
      python="$(dirname "$(command -v ddtrain-launch)")/python"
      "$python" - "$OUT" "${sizes[@]}" <<'PY'
import json, statistics, sys
out, sizes = sys.argv[1], [int(s) for s in sys.argv[2:]]
base = None
for n in sizes:
    rows = [json.loads(line) for line in open(f"{out}/n{n}/metrics.jsonl")]
    # The first logged step includes warm-up (allocations, first collectives): left out.
    rate = statistics.median(r["samples_per_s"] for r in (rows[1:] or rows))
    base = base or (sizes[0], rate)
    eff = rate / base[1] * base[0] / n
    print(f"n={n}: {rate:.1f} samples/s (median of {len(rows[1:] or rows)} logged steps), "
          f"efficiency vs n={base[0]}: {eff:.0%}  ({out}/n{n}/metrics.jsonl)")
PY
    fi
    ;;
  *)
    echo "scaling_sweep.sh: error: MODE=$MODE is not allowed; fix: MODE=study or MODE=loop" >&2
    exit 2
    ;;
esac
