"""CUDA runs of the merging table (batches, task vectors, switches and baselines on the GPU)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from t_switch.config import METHODS as ALL_METHODS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SCRIPT = Path(__file__).parent / "scripts" / "shard_table.py"
METHODS = tuple(m for m in ALL_METHODS if m != "t_switch")


def _table(device):
    spec = importlib.util.spec_from_file_location("shard_table", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.table(device, METHODS)


def test_cuda_table_matches_cpu():
    cpu, gpu = _table(None), _table("cuda")
    assert set(cpu) == set(gpu)
    for name, row in cpu.items():
        if name == "storage":
            assert gpu[name] == row
        elif name == "pulse":
            for t, points in row.items():
                for a, b in zip(points, gpu[name][t]):
                    assert a["density"] == b["density"]
                    assert abs(a["sparse"] - b["sparse"]) <= 3.2 and abs(a["binary"] - b["binary"]) <= 3.2
        else:
            for key, value in row.items():
                assert abs(value - gpu[name][key]) <= 3.2, (name, key, value, gpu[name][key])


def test_cuda_text_model_with_dict_batches():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from t_switch.config import AutoSwitchConfig, BaselineConfig, SwitchConfig
    from t_switch.experiment import run_merging
    from t_switch.task_vector import task_vector

    torch.manual_seed(0)
    cfg = RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100, num_labels=2)  # fmt: skip
    pre = RobertaForSequenceClassification(cfg).eval().cuda()
    tvs, heads, evals, queries = {}, {}, {}, {}
    for i, t in enumerate(("cola", "sst2")):
        ft = RobertaForSequenceClassification(cfg).cuda()
        ft.load_state_dict(pre.state_dict())
        with torch.no_grad():
            for p in ft.parameters():
                p.add_(0.02 * torch.randn_like(p))
        tvs[t] = task_vector(pre, ft)
        heads[t] = {n: p.detach() for n, p in ft.named_parameters() if "classifier" in n}
        ids = torch.randint(3, 100, (8, 9), generator=torch.Generator().manual_seed(i))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        evals[t] = [(batch, torch.randint(0, 2, (8,)))]
        queries[t] = [(batch, None)]

    def feat(input_ids, attention_mask=None, **_):
        return pre.roberta(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]

    res = run_merging(
        pre, tvs, evals, SwitchConfig(drop_ratio=0.7), AutoSwitchConfig(k=3, n_query=8, mode="hard"),
        BaselineConfig(methods=["task_arithmetic", "emr"]), ["pretrained", "baselines", "t_switch", "auto_switch"],
        overrides=heads, query_loaders=queries, feature_fn=feat, device="cuda",
    )  # fmt: skip
    for name in ("pretrained", "task_arithmetic", "emr", "t_switch", "auto_switch"):
        assert 0.0 <= res[name]["avg"] <= 100.0
