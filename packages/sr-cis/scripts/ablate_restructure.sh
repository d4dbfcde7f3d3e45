#!/usr/bin/env bash
# Restructuring period ablation: R in {None, 1, 2, 5, end} on a table config (default CIFAR100).
set -euo pipefail
CFG=${1:-cifar100_10t}
for R in null 1 2 5 end; do
  sr-cis train --config "$CFG" name="ablate_R_${R}" methods=[sr_cis] system.restructure.period="$R"
done
