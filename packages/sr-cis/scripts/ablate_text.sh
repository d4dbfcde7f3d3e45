#!/usr/bin/env bash
# Text-memory ablation: MLLM descriptions vs class-name prompts for the scenario replay.
set -euo pipefail
CFG=${1:-cifar100_10t}
sr-cis train --config "$CFG" name=ablate_text methods=[sr_cis,sr_cis_no_text]
