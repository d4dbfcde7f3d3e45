#!/usr/bin/env bash
# CA-OAD ablation (spec §7): z_tau in {0.5, 0.842, 1.28} x scope in {online, batch}.
set -euo pipefail
CFG=${1:-configs/cifar100_10t.yaml}
for Z in 0.5 0.842 1.28; do for S in online batch; do
  sr-cis train --config "$CFG" name="ablate_caoad_${Z}_${S}" methods=[sr_cis] \
    system.caoad.z_threshold="$Z" system.caoad.scope="$S"
done; done
