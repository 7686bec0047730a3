#!/usr/bin/env bash
# Something-Something-v2: train (DeepSpeed, one process per GPU) and test (3 temporal x 1 spatial views).
#
#   sbatch slurm/ssv2.sh
#   METHOD=full DATA_ROOT=/data/ssv2 sbatch --nodes=4 slurm/ssv2.sh
#
# Same flags and variables as slurm/k400.sh (see there; CONFIG defaults to
# "configs/datasets/ssv2.yaml configs/methods/$METHOD.yaml"). DATA_ROOT holds videos/ and the official
# something-something-v2-{labels,train,validation}.json.
#
#SBATCH --job-name=ssv2
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=10
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=ssv2_%j.out
#SBATCH --error=ssv2_%j.err

DATASET=ssv2
DATA_OVERRIDES=("data.root=${DATA_ROOT:-}/videos" "data.labels=${DATA_ROOT:-}/something-something-v2-labels.json"
                "data.train=${DATA_ROOT:-}/something-something-v2-train.json"
                "data.val=${DATA_ROOT:-}/something-something-v2-validation.json")
# shellcheck disable=SC1091
source "${REPO:-${SLURM_SUBMIT_DIR:-$(pwd)}}/slurm/_train_job.sh"
