"""The package trainer on a tiny language model (LayerNorm, no BatchNorm), alone or under torchrun.

Trains 2 steps (a checkpoint), resumes to 4 in a fresh Trainer, scores the sharded evaluation, checks that
the per-process StepSampler batches make up one process's batch, and (rank 0) saves the result.
Usage: python ddp_train.py OUT (see test_distributed.py).
"""

import sys
from pathlib import Path

import torch

from papers_shared import distributed as dist
from smr_ssm.config import TrainConfig
from smr_ssm.data.wikitext import LMWindows, perplexity
from smr_ssm.models import SSMConfig, SSMForCausalLM
from smr_ssm.trainer import StepSampler, Trainer


def model() -> SSMForCausalLM:
    torch.manual_seed(0)
    return SSMForCausalLM(
        SSMConfig(vocab_size=40, d_model=16, n_layer=2, d_state=8, layer_type="s4d", smr="default")
    )


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_distributed("cpu")
    tokens = torch.randint(0, 40, (3000,), generator=torch.Generator().manual_seed(0))
    windows = LMWindows(tokens, context=24, seed=1)
    cfg = TrainConfig(lr=1e-2, max_steps=4, batch_size=4, warmup_frac=0.0, checkpoint_every=2, log_every=1,
                      eval_every=0, device="cpu")  # fmt: skip

    def batch_fn(i):
        return windows.batch(i, cfg.batch_size, rank=dist.rank(), world=dist.world_size())

    Trainer(model(), cfg, batch_fn, out_dir=out, progress=False).train(stop_at=2)
    resumed = Trainer(model(), cfg, batch_fn, out_dir=out, progress=False)
    history = resumed.train(resume=True)
    ppl = perplexity(resumed.module, windows.eval_batches(5), torch.device("cpu"))
    sampler = StepSampler(40, 8, seed=3)  # the processes' shares of step 5 make up the global batch
    shares = dist.gather_objects(sampler(5).tolist())
    if dist.is_main_process():
        result = {"params": resumed.module.state_dict(), "ppl": torch.tensor(ppl["ppl"]), "tokens": ppl["tokens"],
                  "loss": torch.tensor([h["loss"] for h in history if "loss" in h]),
                  "batch": torch.tensor([i for share in shares for i in share])}  # fmt: skip
        torch.save(result, out / "result.pt")
    dist.barrier()
    dist.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
