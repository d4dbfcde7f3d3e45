"""DDP (2 CPU processes, gloo) gives the same adapters as one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import os, sys, warnings
    warnings.filterwarnings("ignore")
    import datasets, torch
    from peft import LoraConfig
    from ofs_dpo import OFSDPOConfig, OFSDPOTrainer
    from ofs_dpo.adapters import adapter_state_dict
    from ofs_dpo.data import tiny_gpt2, toy_domains, toy_tokenizer

    datasets.disable_progress_bars()
    torch.set_num_threads(1)
    out, per_device = sys.argv[1], int(sys.argv[2])
    tok = toy_tokenizer(40)
    data = toy_domains(["toy_a"], n_train=16, n_eval=4, seed=0)["toy_a"]["train"]
    args = OFSDPOConfig(
        output_dir=out + ".run", report_to=[], per_device_train_batch_size=per_device, max_steps=3,
        learning_rate=1e-2, warmup_steps=0, bf16=False, gradient_checkpointing=False, save_strategy="no",
        use_cpu=True, ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None, disable_tqdm=True, seed=0, chase_interval=1, logging_steps=100,
    )
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn"], task_type="CAUSAL_LM")
    tr = OFSDPOTrainer(tiny_gpt2(len(tok), seed=0), args=args, train_dataset=data, processing_class=tok,
                       peft_config=lora)
    tr.train()
    if tr.accelerator.is_main_process:
        pm = tr.accelerator.unwrap_model(tr.model)
        torch.save({"fast": adapter_state_dict(pm, "default"), "slow": adapter_state_dict(pm, "slow"),
                    "history": tr.chasing.history, "world": tr.accelerator.num_processes}, out)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("OFS_DPO_DDP_TEST") != "1",
    reason="launches 3 extra Python processes with torchrun (~2 min of CPU on 2 cores); set OFS_DPO_DDP_TEST=1 to run",
)
def test_ddp_equals_single_process(tmp_path):
    script = tmp_path / "ddp_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    single = tmp_path / "single.pt"
    ddp = tmp_path / "ddp.pt"
    subprocess.run([sys.executable, str(script), str(single), "4"], check=True, env=env, timeout=600)
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), str(ddp), "2"],
        check=True,
        env=env,
        timeout=600,
    )
    a, b = torch.load(single, weights_only=False), torch.load(ddp, weights_only=False)
    assert a["world"] == 1 and b["world"] == 2
    for module in ("fast", "slow"):
        for k in a[module]:
            assert torch.allclose(a[module][k], b[module][k], atol=1e-5), (module, k)
    assert [h["winner"] for h in a["history"]] == [h["winner"] for h in b["history"]]
