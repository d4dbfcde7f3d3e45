#!/usr/bin/env bash
# Component ablation on CIFAR100 on one shared pre-training per seed: V2V, G2G without LGP and CAG2G,
# +LGP, +CAG2G, full, node term only, edge term only. Extra key=value overrides are passed through.
set -euo pipefail
G2G=${G2G:-g2g-fscil}
$G2G ablate --config cifar100 --resume \
  "variants=[v2v,g2g_plain,g2g_no_cag2g,g2g_no_lgp,g2g,g2g_node_only,g2g_edge_only]" "$@"
