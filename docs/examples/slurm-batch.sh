#!/bin/bash
# Runs the jobs of manifest.jsonl over a Slurm job array: array task k (counted from
# SLURM_ARRAY_TASK_MIN) runs manifest jobs k, k+N, k+2N, ... where N is the array's size.
# opconvert reads SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_COUNT
# itself, so no --shard is needed. Resubmitting the same array after a crash or a
# timeout skips the jobs whose outputs are complete.
#SBATCH --job-name=opconvert-batch
#SBATCH --array=1-8%4
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --output=logs/opconvert-%A_%a.out
set -euo pipefail

# Each job of a task uses the task's cores; --jobs 2 overlaps small jobs' file work.
opconvert batch manifest.jsonl --jobs 2 --json > "results-${SLURM_ARRAY_TASK_ID}.jsonl"
