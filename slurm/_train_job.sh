# Body of slurm/k400.sh and slurm/ssv2.sh (sourced; they set DATASET and the defaults): train with one process
# per GPU under srun, requeue on a stop signal, then run the multi-view test of the best checkpoint.
# CONFIG: one or more YAML files separated by spaces (paths without spaces), merged left to right; default the
# dataset file and the method file of METHOD: configs/datasets/$DATASET.yaml configs/methods/$METHOD.yaml.
#
# Preemption and time limits: Slurm sends USR1 to this batch shell (--signal=B:USR1@...); the trap forwards it to
# the srun step, whose ranks save a checkpoint at the next step boundary and exit with EXIT_REQUEUE (75, defined
# in video_st/engine/requeue.py); the job then requeues
# itself, and the requeued job (same job id, same OUTPUT_DIR) resumes from that checkpoint (checkpoint.resume=auto).
# A job that finished training does not requeue.

set -euo pipefail
die() { echo "$(basename "$0"): $*" >&2; exit 2; }

REPO="${REPO:-${SLURM_SUBMIT_DIR:-$(pwd)}}"
cd "$REPO"
[[ -f tools/train_net.py ]] || die "no tools/train_net.py in $REPO: submit from the repository root or set REPO"
if [[ -z "${PYTHON:-}" && -f .venv/bin/activate ]]; then
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
PYTHON="${PYTHON:-python}"
METHOD="${METHOD:-sparse_tuning}"
CONFIG="${CONFIG:-configs/datasets/$DATASET.yaml configs/methods/$METHOD.yaml}"
read -r -a configs <<< "$CONFIG"
(( ${#configs[@]} )) || die "CONFIG is empty: give one or more YAML files"
for config in "${configs[@]}"; do
  [[ -f "$config" ]] || die "CONFIG=$CONFIG: $config does not exist"
done

JOB_ID="${SLURM_JOB_ID:?not a Slurm job: submit with sbatch}"
OUTPUT_DIR="${OUTPUT_DIR:-outputs/${DATASET}_${JOB_ID}}"   # a requeued job keeps its id, hence its folder
mkdir -p "$OUTPUT_DIR"
overrides=("output_dir=$OUTPUT_DIR")
if [[ -n "${DATA_ROOT:-}" ]]; then
  overrides+=("${DATA_OVERRIDES[@]}")
fi
# EXTRA: more key=value overrides, split on spaces (e.g. EXTRA="optim.epochs=30 data.num_workers=6").
read -r -a extra <<< "${EXTRA:-}"
overrides+=(${extra[@]+"${extra[@]}"})

# Rendezvous: every srun task computes it from Slurm's variables (video_st/engine/distributed.py: the first node
# of the allocation, a port from the job id and the restart count, new after each requeue because the previous
# run's store socket may still hold the old one). srun assigns the ranks (SLURM_PROCID ...); launcher variables
# exported from the submitting shell (sbatch copies its environment) would override that.
RESTART="${SLURM_RESTART_COUNT:-0}"
unset RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT
# The requeue exit code and marker file, as the training defines them.
eval "$("$PYTHON" -m video_st.engine.requeue)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"

echo "$(date -Is) job $JOB_ID restart $RESTART on ${SLURM_JOB_NODELIST}: ${SLURM_NTASKS:-1} tasks," \
     "config $CONFIG, output $OUTPUT_DIR"

step_pid=""
forward_stop() {
  echo "$(date -Is) stop signal received: asking the training to checkpoint and stop"
  [[ -n "$step_pid" ]] && kill -USR1 "$step_pid" 2>/dev/null || true
}
trap forward_stop USR1 TERM

rm -f "$OUTPUT_DIR/$REQUEUE_MARKER"  # only this run's stop may requeue it
srun --kill-on-bad-exit=1 "$PYTHON" tools/train_net.py --config "${configs[@]}" "${overrides[@]}" &
step_pid=$!
# `wait` returns early when a trapped signal arrives; keep waiting until the step itself has ended.
rc=0
while true; do
  wait "$step_pid" && rc=0 || rc=$?
  kill -0 "$step_pid" 2>/dev/null || break
done

# The requeue code, or the marker file: srun may report another code when it killed the ranks still exiting.
if [[ $rc -eq $EXIT_REQUEUE || -f "$OUTPUT_DIR/$REQUEUE_MARKER" ]]; then
  echo "$(date -Is) training stopped at a checkpoint: requeueing job $JOB_ID"
  scontrol requeue "$JOB_ID"
  exit 0
elif [[ $rc -ne 0 ]]; then
  die "training failed with exit code $rc"
fi
trap - USR1 TERM
echo "$(date -Is) training finished; multi-view test of the best checkpoint"
srun --kill-on-bad-exit=1 "$PYTHON" tools/test_net.py --config "${configs[@]}" "${overrides[@]}"
echo "$(date -Is) done: $OUTPUT_DIR/test/summary.json"
