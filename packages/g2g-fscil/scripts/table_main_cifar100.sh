#!/usr/bin/env bash
# Main cifar100 table: G2G and the baselines sharing its pipeline (V2V / C-FSCIL, NCM, TEEN), 3 seeds.
# Extra key=value overrides are passed through (e.g. data_root=...). Several GPUs: set
# G2G="torchrun --nproc-per-node 8 -m g2g_fscil.cli" (the default runs the console script).
set -euo pipefail
G2G=${G2G:-g2g-fscil}
for m in g2g v2v ncm teen; do
  $G2G run --config cifar100 --resume "method=$m" "seeds=[0,1,2]" "$@"
done
