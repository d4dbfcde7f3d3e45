#!/usr/bin/env bash
# Component ablation on CIFAR100 (spec §7): v2v, g2g, g2g+lgp, g2g+cag2g, full on one shared pre-training,
# then the node-only / edge-only variants. Run from the workspace root.
set -euo pipefail
C=packages/g2g-fscil/configs
uv run --no-sync g2g-fscil ablate --config "$C/cifar100.yaml" --variants v2v,g2g,g2g+lgp,g2g+cag2g,full --resume "$@"
for v in node_only edge_only; do
  uv run --no-sync g2g-fscil run --config "$C/ablation_$v.yaml" --resume "$@"
done
