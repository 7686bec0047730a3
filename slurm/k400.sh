#!/usr/bin/env bash
# Kinetics-400: train (DeepSpeed, one process per GPU) and test (1 temporal x 3 spatial views) in one job.
#
#   sbatch slurm/k400.sh                                            # Sparse-Tuning ViT-B/16, 8 GPUs on one node
#   METHOD=adaptformer DATA_ROOT=/data/k400 sbatch --nodes=2 slurm/k400.sh
#   CONFIG="configs/datasets/k400.yaml configs/methods/lora.yaml my_cluster.yaml" sbatch slurm/k400.sh
#   EXTRA="optim.epochs=30 model.pretrained=/ckpt/vit_b16_in21k.pt" sbatch --time=48:00:00 slurm/k400.sh
#
# Every #SBATCH line is a default: a flag given to sbatch wins (--nodes, --gres=gpu:N with --ntasks-per-node=N,
# --cpus-per-task, --time, --partition). Submit from the repository root (or set REPO).
# Environment:
#   METHOD      a file of configs/methods/ without .yaml (default sparse_tuning)
#   CONFIG      YAML file(s), separated by spaces, merged left to right (default
#               "configs/datasets/k400.yaml configs/methods/$METHOD.yaml")
#   DATA_ROOT   dataset folder with annotations/{train,val}.csv (default: the config's data.root and files)
#   OUTPUT_DIR  default outputs/k400_<job id> (checkpoints, logs, test results; a requeued job reuses it)
#   EXTRA       key=value overrides of the config, separated by spaces
#   PYTHON      default: python of .venv when the repository has one, else python on PATH
# Logs: k400_<job id>.out / .err in the submit folder (appended across requeues); training log and TensorBoard
# under OUTPUT_DIR.
#
#SBATCH --job-name=k400
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=10
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=k400_%j.out
#SBATCH --error=k400_%j.err

DATASET=k400
DATA_OVERRIDES=("data.root=${DATA_ROOT:-}" "data.train=${DATA_ROOT:-}/annotations/train.csv"
                "data.val=${DATA_ROOT:-}/annotations/val.csv")
# shellcheck disable=SC1091
source "${REPO:-${SLURM_SUBMIT_DIR:-$(pwd)}}/slurm/_train_job.sh"
