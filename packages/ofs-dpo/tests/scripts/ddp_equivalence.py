"""A few OFS-DPO steps on the toy domain; run alone (global batch 4) or under torchrun (2 x 2).

Writes ``<out>.safetensors`` (both adapters) and ``<out>.json`` (role history, world size) from rank 0.
Used by ``tests/test_ddp.py``; the tiny GPT-2 has no BatchNorm, so one process and two see the same math.
"""

import os
import sys
import warnings

warnings.filterwarnings("ignore")

import datasets  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig  # noqa: E402

from ofs_dpo import OFSDPOConfig, OFSDPOTrainer  # noqa: E402
from ofs_dpo.adapters import adapter_state_dict  # noqa: E402
from ofs_dpo.data import tiny_gpt2, toy_domains, toy_tokenizer  # noqa: E402
from papers_shared.checkpoints import save_safetensors  # noqa: E402
from papers_shared.results import write_json  # noqa: E402

datasets.disable_progress_bars()
torch.set_num_threads(1)
out, per_device = sys.argv[1], int(sys.argv[2])
world = int(os.environ.get("WORLD_SIZE", "1"))
tok = toy_tokenizer(40)
data = toy_domains(["toy_a"], n_train=16, n_eval=4, seed=0)["toy_a"]["train"]
args = OFSDPOConfig(
    output_dir=out + ".run",
    report_to=[],
    per_device_train_batch_size=per_device,
    max_steps=3,
    learning_rate=1e-2,
    warmup_steps=0,
    bf16=False,
    gradient_checkpointing=False,
    save_strategy="no",
    use_cpu=True,
    ddp_backend="gloo" if world > 1 else None,
    disable_tqdm=True,
    seed=0,
    chase_interval=1,
    logging_steps=100,
)
lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn"], task_type="CAUSAL_LM")
tr = OFSDPOTrainer(
    tiny_gpt2(len(tok), seed=0), args=args, train_dataset=data, processing_class=tok, peft_config=lora
)
tr.train()
if tr.accelerator.is_main_process:
    pm = tr.accelerator.unwrap_model(tr.model)
    tensors = {f"fast/{k}": v for k, v in adapter_state_dict(pm, "default").items()}
    tensors.update({f"slow/{k}": v for k, v in adapter_state_dict(pm, "slow").items()})
    save_safetensors(tensors, out + ".safetensors")
    write_json({"history": tr.chasing.history, "world": tr.accelerator.num_processes}, out + ".json")
