#!/usr/bin/env bash
# Text-memory ablation (spec §7): MLLM descriptions vs class-name prompts for the scenario replay.
set -euo pipefail
CFG=${1:-configs/cifar100_10t.yaml}
sr-cis train --config "$CFG" name=ablate_text methods=[sr_cis,sr_cis_no_text]
