#!/usr/bin/env bash
# One preprocessing shard per array task (tools/preprocess.py; video_st/preprocess/run.py has the details).
#
#   SUBCOMMAND=resize INPUT=/data/k400/train.csv OUTPUT=/data/k400_320 EXTRA="--root /data/k400" \
#       sbatch slurm/preprocess.sh
#   SUBCOMMAND=frames INPUT=/data/ssv2/train.txt OUTPUT=/data/ssv2_frames EXTRA="--root /data/ssv2 --fps 12" \
#       sbatch --array=0-63%16 --cpus-per-task=4 --partition=cpu slurm/preprocess.sh
#   SUBCOMMAND=frames INPUT=/data/ssv2/train.json OUTPUT=/data/ssv2_frames \
#       EXTRA="--ssv2-labels /data/ssv2/labels.json --root /data/ssv2/videos" sbatch slurm/preprocess.sh
#
# Submit from the repository root (the job runs in SLURM_SUBMIT_DIR; set REPO to run elsewhere).
# Every #SBATCH line below is a default: a flag given to sbatch wins.
# Environment:
#   SUBCOMMAND  scan | resize | frames                                       (required)
#   INPUT       folder of videos, K400 CSV, 'path label' list, or SSv2 split JSON   (required)
#   OUTPUT      output folder                                                       (required)
#   EXTRA       more tools/preprocess.py options, e.g. "--root /data --short-side 256"; a --workers here
#               overrides the default of one worker per allocated CPU
#   NUM_SHARDS  default SLURM_ARRAY_TASK_COUNT. Set it when re-running a subset of the tasks
#               (sbatch --array=3,7 with NUM_SHARDS=16): the count would otherwise be 2.
#   PYTHON      default: python of .venv when the repository has one, else python on PATH
# The shard that finishes last writes the merged list (frames.txt / invalid.txt); a failed or re-run shard:
# run it again with the same settings, finished videos are verified and skipped.
#
#SBATCH --job-name=preprocess
#SBATCH --array=0-15
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=preprocess_%A_%a.out
#SBATCH --error=preprocess_%A_%a.err
# (log paths are relative to the submit folder, which always exists; a logs/ folder that does not exist
# would make the job fail without any log)

set -euo pipefail

die() { echo "preprocess.sh: $*" >&2; exit 2; }

: "${SUBCOMMAND:?set SUBCOMMAND to scan, resize or frames}"
: "${INPUT:?set INPUT to a folder of videos, a K400 CSV, a 'path label' list or an SSv2 split JSON}"
: "${OUTPUT:?set OUTPUT to the output folder}"
case "$SUBCOMMAND" in
  scan|resize|frames) ;;
  *) die "SUBCOMMAND must be scan, resize or frames, got '$SUBCOMMAND'" ;;
esac
SHARD="${SLURM_ARRAY_TASK_ID:?not an array task: submit with sbatch (--array)}"
NUM_SHARDS="${NUM_SHARDS:-${SLURM_ARRAY_TASK_COUNT:?SLURM_ARRAY_TASK_COUNT unset: set NUM_SHARDS}}"
if (( SHARD >= NUM_SHARDS )); then
  die "array task $SHARD is not below NUM_SHARDS=$NUM_SHARDS (set NUM_SHARDS to the total number of shards)"
fi

REPO="${REPO:-${SLURM_SUBMIT_DIR:-$(pwd)}}"
cd "$REPO"
[[ -f tools/preprocess.py ]] || die "no tools/preprocess.py in $REPO: submit from the repository root or set REPO"
if [[ -z "${PYTHON:-}" && -f .venv/bin/activate ]]; then
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
PYTHON="${PYTHON:-python}"

# EXTRA is split on spaces into separate arguments (no glob expansion); it comes after the default
# --workers so that its own --workers wins.
read -r -a extra_args <<< "${EXTRA:-}"

echo "preprocess.sh: $SUBCOMMAND shard $SHARD of $NUM_SHARDS on $(hostname), job ${SLURM_ARRAY_JOB_ID:-?}_$SHARD"
exec "$PYTHON" tools/preprocess.py "$SUBCOMMAND" --input "$INPUT" --output "$OUTPUT" \
  --workers "${SLURM_CPUS_PER_TASK:-1}" ${extra_args[@]+"${extra_args[@]}"} \
  --shard "$SHARD" --num-shards "$NUM_SHARDS"
