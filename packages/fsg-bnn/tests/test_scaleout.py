"""The single-process side of the multi-process path: loaders on a DistributedSampler with a new
permutation every epoch, and the averaging helpers are no-ops in one process."""

import torch
import torch.nn as nn

from fsg_bnn.config import DataConfig, OptimConfig
from fsg_bnn.convert import binarize
from fsg_bnn.data import make_loaders
from fsg_bnn.distributed import all_reduce_mean_, average_meta_signals, sum_across_ranks, wrap_model
from fsg_bnn.fsg import build_optimizer
from fsg_bnn.trainer import Trainer

DATA = DataConfig(dataset="digits", batch_size=64, test_batch_size=512, num_workers=0)


def test_loaders_draw_from_a_distributed_sampler_reseeded_every_epoch():
    train, test = make_loaders(DATA, 10, seed=5)
    assert isinstance(train.sampler, torch.utils.data.DistributedSampler)
    assert train.batch_size == 64 and train.sampler.num_replicas == 1
    assert isinstance(test.dataset, torch.utils.data.TensorDataset)  # one process: the whole test set
    first = list(train.sampler)
    assert first == list(make_loaders(DATA, 10, seed=5)[0].sampler)  # the seed fixes the order
    train.sampler.set_epoch(1)
    second = list(train.sampler)
    assert sorted(second) == sorted(first) and second != first


def test_fit_sets_the_epoch_of_the_sampler():
    torch.manual_seed(0)
    model = binarize(nn.Sequential(nn.Linear(64, 10)))
    train, test = make_loaders(DATA, 10, seed=0)
    trainer = Trainer(model, build_optimizer(model, OptimConfig(method="ste")), max_steps=1)
    assert trainer.net is model  # no DDP wrapper in one process
    trainer.fit(train, 3, test)
    trainer.max_steps = 2
    trainer.fit(train, 3, test)
    assert train.sampler.epoch == 1


def test_helpers_are_no_ops_in_one_process():
    t = [torch.ones(3), torch.zeros(2, 2)]
    assert all(a is b for a, b in zip(all_reduce_mean_(t), t, strict=True))
    assert sum_across_ranks([1, 2.5]) == [1.0, 2.5]
    model = binarize(nn.Sequential(nn.Linear(4, 2)))
    assert wrap_model(model, torch.device("cpu"), sync_bn=False) is model
    opt = build_optimizer(model, OptimConfig(method="multifc"))
    g = torch.randn(2, 4)
    model[0].quantized_grad = g
    average_meta_signals(opt)
    assert model[0].quantized_grad is g
