#!/usr/bin/env bash
# Restructuring period ablation (spec §7): R in {None, 1, 2, 5, end} on a table config (default CIFAR100).
set -euo pipefail
CFG=${1:-configs/cifar100_10t.yaml}
for R in null 1 2 5 end; do
  sr-cis train --config "$CFG" name="ablate_R_${R}" methods=[sr_cis] system.restructure.period="$R"
done
