#!/usr/bin/env bash
# Main table row set on cub200 (spec §5): G2G and the baselines sharing its trainer, 3 seeds.
# Run from the workspace root; extra key=value overrides are passed through (e.g. data_root=...).
set -euo pipefail
CFG=packages/g2g-fscil/configs/cub200.yaml
for m in g2g v2v ncm teen; do
  uv run --no-sync g2g-fscil run --config "$CFG" --method "$m" --resume "seeds=[0,1,2]" "$@"
done
