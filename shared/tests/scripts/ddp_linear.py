"""Train a small linear model with papers_shared.distributed; run alone or under torchrun (see test_distributed)."""

import json
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

from papers_shared import distributed as pd

out, global_batch = sys.argv[1], int(sys.argv[2])
info = pd.init_distributed("cpu")
g = torch.Generator().manual_seed(0)
x = torch.randn(64, 5, generator=g)
y = x @ torch.arange(1.0, 6.0) + 0.1 * torch.randn(64, generator=g)
data = TensorDataset(x, y)
torch.manual_seed(0)
model = pd.wrap_ddp(torch.nn.Linear(5, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
sampler = pd.make_sampler(data, shuffle=True, seed=3)
loader = DataLoader(data, batch_size=pd.per_rank_batch_size(global_batch), sampler=sampler)
losses = []
for epoch in range(3):
    sampler.set_epoch(epoch)
    for xb, yb in loader:
        loss = torch.nn.functional.mse_loss(model(xb).squeeze(-1), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(pd.reduce_mean(loss, weight=len(xb)))
rows = pd.gather_rows([i * i for i in pd.shard(list(range(11)))], items=list(range(11)))
metrics = pd.reduce_dict({"a": float(pd.rank()), "b": 1.0})
if pd.is_main_process():
    w = pd.unwrap(model).weight.detach().flatten().tolist()
    with open(out, "w") as fh:
        json.dump({"world": info.world_size, "w": w, "losses": losses, "rows": rows, "metrics": metrics}, fh)
pd.cleanup()
