import pytest
import torch

from sr_cis.fast_path import FastInference, RegionReadout, comparable_scores, route
from sr_cis.memory import ComplementaryMemory, Region
from sr_cis.prototypes import PrototypeHead


class FakeModel:
    def __init__(self):
        self.calls = []

    def features(self, x, adapter):
        self.calls.append(adapter)
        return torch.ones(x.shape[0], 2)


def _mem():
    mem = ComplementaryMemory()
    a = PrototypeHead([0, 1], 2)
    b = PrototypeHead([2, 3], 2)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[10.0, 10.0], [0.0, 0.0]]))  # certain on class 0
        # b: uniform (zero weights)
    mem.add_stm(0, Region("stm_0", "stm", a, [0]))
    mem.add_stm(1, Region("stm_1", "stm", b, [1]))
    return mem


def test_max_conf_picks_the_certain_region():
    m = FakeModel()
    out = FastInference(m, _mem(), routing="max_conf", top_k=3)(torch.zeros(4, 3, 2, 2))
    assert out.pred.tolist() == [0] * 4 and out.region.tolist() == [0] * 4
    assert out.passes == 2 and sorted(m.calls) == ["stm_0", "stm_1"]
    # k=3 > 2 classes of region A: third candidate filled from region B
    assert out.topk[0, :2].tolist() == [0, 1] and out.topk[0, 2].item() in (2, 3)
    assert torch.allclose(out.conf, torch.full((4,), torch.tensor([20.0, 0.0]).softmax(0).max().item()))


def test_ltm_only_never_reads_stm():
    mem = _mem()
    mem.ltm = Region("ltm_1", "ltm", PrototypeHead([7, 8], 2), [])
    m = FakeModel()
    FastInference(m, mem, routing="ltm_only")(torch.zeros(2, 3, 2, 2))
    assert m.calls == ["ltm_1"]
    with pytest.raises(RuntimeError, match="LTM"):
        FastInference(m, _mem(), routing="ltm_only")(torch.zeros(2, 3, 2, 2))
    with pytest.raises(RuntimeError, match="empty"):
        FastInference(m, ComplementaryMemory())(torch.zeros(2, 3, 2, 2))


def test_memory_rejects_repeated_classes():
    mem = _mem()
    with pytest.raises(ValueError, match="already memorised"):
        mem.add_stm(2, Region("stm_2", "stm", PrototypeHead([3, 4], 2), [2]))


def test_nearest_prototype_compares_distances_not_confidences():
    # region A: 2 classes, prototypes far from h; region B: 8 classes, one prototype at h.
    h = torch.tensor([[1.0, 0.0]])
    a = PrototypeHead.from_prototypes(torch.tensor([[5.0, 0.0], [-5.0, 0.0]]), [0, 1])
    pb = torch.tensor([[1.0, 0.0]] + [[0.0, 3.0 + i] for i in range(7)])
    b = PrototypeHead.from_prototypes(pb, list(range(2, 10)))
    za, zb = a(h), b(h)
    ro = RegionReadout([za, zb], [comparable_scores(a, h, za), comparable_scores(b, h, zb)],
                       [torch.tensor(a.classes), torch.tensor(b.classes)])  # fmt: skip
    # comparable scores are -||h - p_c||^2 / 2
    d2 = torch.cat([torch.cdist(h, a.weight), torch.cdist(h, b.weight)], 1) ** 2
    assert torch.allclose(torch.cat(ro.comparable, 1), -0.5 * d2, atol=1e-5)
    near = route(ro, "nearest_prototype", top_k=3)
    assert near.pred.tolist() == [2] and near.region.tolist() == [1]  # distance 0 in region B
    assert near.topk[0].tolist() == torch.tensor([0, 1, *range(2, 10)])[(-d2[0]).topk(3).indices].tolist()
    # the 2-class head is far more "confident" (softmax over 2 rows 10 apart): max_conf picks region A
    old = route(ro, "max_conf", top_k=3)
    assert old.region.tolist() == [0] and old.pred.tolist() == [0]
    with pytest.raises(ValueError, match="routing"):
        route(ro, "energy")


def test_cosine_heads_are_compared_as_they_are():
    h = torch.tensor([[0.0, 2.0]])
    head = PrototypeHead.from_prototypes(
        torch.tensor([[1.0, 0.0], [0.0, 1.0]]), [0, 1], norm="cosine", tau=0.5
    )
    z = head(h)
    assert torch.equal(comparable_scores(head, h, z), z) and torch.allclose(z, torch.tensor([[0.0, 2.0]]))


def test_frozen_prototype_routing_chooses_in_the_shared_space_then_the_region_answers():
    # frozen space: h0 is nearest to class 3's frozen mean (region B); region B's own head then answers 2
    a = PrototypeHead.from_prototypes(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), [0, 1])
    b = PrototypeHead.from_prototypes(torch.tensor([[5.0, 5.0], [-5.0, -5.0]]), [2, 3])
    mem = ComplementaryMemory()
    mem.add_stm(0, Region("stm_0", "stm", a, [0], torch.tensor([[4.0, 0.0], [0.0, 4.0]])))
    mem.add_stm(1, Region("stm_1", "stm", b, [1], torch.tensor([[-3.0, 0.0], [1.0, 1.0]])))
    m = FakeModel()  # every feature is (1, 1)
    out = FastInference(m, mem, routing="frozen_prototype", top_k=3)(torch.zeros(1, 3, 2, 2))
    assert m.calls == ["stm_0", "stm_1", None] and out.passes == 3
    assert out.region.tolist() == [1] and out.pred.tolist() == [2]  # head of B: (1,1) is nearer (5,5)
    # candidates: the answer, then the other classes by frozen distance (3 at 0, 0 and 1 at 10, 2 at 17)
    assert out.topk[0].tolist()[0] == 2 and out.topk[0].tolist()[1] == 3
    with pytest.raises(RuntimeError, match="frozen prototypes"):
        FastInference(m, _mem(), routing="frozen_prototype")(torch.zeros(1, 3, 2, 2))
