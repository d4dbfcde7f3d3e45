#!/usr/bin/env bash
# CA-OAD ablation: rule {quantile, zscore} x score {distance_margin, max_prob} on a table config.
set -euo pipefail
CFG=${1:-cifar100_10t}
for RULE in quantile zscore; do for SCORE in distance_margin max_prob; do
  sr-cis train --config "$CFG" name="ablate_caoad_${RULE}_${SCORE}" methods=[sr_cis] \
    system.caoad.rule="$RULE" system.caoad.score="$SCORE"
done; done
