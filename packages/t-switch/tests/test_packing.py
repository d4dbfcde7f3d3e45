import math

import pytest
import torch

from papers_shared.errors import CheckpointError
from t_switch import BinarySwitch, load_switches, pack_ternary, save_switches, storage_report, unpack_ternary
from t_switch.packing import LAYOUTS, PackedTensor, ternary_bits, ternary_counts


def _ternary(shape, density=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.where(torch.rand(shape, generator=g) < 0.5, 1, -1).to(torch.int8)
    return s * (torch.rand(shape, generator=g) < density).to(torch.int8)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("g", [1, 3, 4, 8, 16])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4, 5), (1,), (0,), (64, 33)])
def test_round_trip_and_bit_count(shape, g, layout):
    S = _ternary(shape, seed=sum(shape) + g)
    p = pack_ternary(S, g, layout)
    assert torch.equal(unpack_ternary(p), S)
    n = S.numel()
    G = S.reshape(-1)
    pad = math.ceil(n / g) * g - n
    groups = torch.cat([G, G.new_zeros(pad)]).view(-1, g) if n else G.view(0, g)
    gnz = int(groups.ne(0).any(1).sum())
    nnz = int(S.ne(0).sum())
    assert p.nbits == math.ceil(n / g) + g * gnz + nnz == ternary_bits(n, g, gnz, nnz)
    assert p.payload_bytes == math.ceil(p.nbits / 8)
    assert ternary_counts(S, g) == (n, gnz, nnz)


def test_all_zero_costs_only_flags():
    S = torch.zeros(10, dtype=torch.int8)
    p = pack_ternary(S, 4)
    assert p.nbits == 3 and p.groups_nonzero == 0
    assert torch.equal(unpack_ternary(p), S)


def test_hand_computed_bitstream():
    # groups [1,0,0,-1] [0,0,0,0] [0,1,0,0]: flags 101 | 1001 10 | 0100 1  -> 10110011 001001(00)
    S = torch.tensor([1, 0, 0, -1, 0, 0, 0, 0, 0, 1, 0, 0])
    p = pack_ternary(S, 4)
    assert p.nbits == 14
    assert p.data.tolist() == [0b10110011, 0b00100100]
    q = pack_ternary(S, 4, "planar")  # 101 | 1001 0100 | 1 0 1
    assert q.nbits == 14 and q.data.tolist() == [0b10110010, 0b10010100]


def test_many_chunks_decode_in_lock_step():
    S = _ternary((50_000,), density=0.3, seed=3)
    p = pack_ternary(S, 4, seek_every=7)  # many short chunks, last one partial
    assert torch.equal(unpack_ternary(p), S)


def test_bad_inputs():
    with pytest.raises(ValueError, match="-1, 0"):
        pack_ternary(torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="NaN"):
        pack_ternary(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="group_size"):
        pack_ternary(torch.tensor([1, 0]), group_size=0)
    with pytest.raises(ValueError, match="layout"):
        pack_ternary(torch.tensor([1, 0]), layout="zigzag")
    p = pack_ternary(_ternary((100,)), 4)
    with pytest.raises(ValueError, match="too short"):
        unpack_ternary(
            PackedTensor(
                p.data[:2], p.shape, 4, p.nbits, p.groups_nonzero, p.nnz, p.layout, p.seek, p.seek_every
            )
        )
    corrupt = p.data.clone()
    corrupt[0] ^= 0xFF  # flips group flags
    with pytest.raises(ValueError, match="corrupt"):
        unpack_ternary(
            PackedTensor(
                corrupt, p.shape, 4, p.nbits, p.groups_nonzero, p.nnz, p.layout, p.seek, p.seek_every
            )
        )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_save_load_round_trip(tmp_path, tiny, layout):
    from t_switch import task_vector

    pre, fts = tiny
    sws = {t: BinarySwitch.from_task_vector(task_vector(pre, m), 0.6) for t, m in fts.items()}
    heads = {t: {"classifier.weight": m.classifier.weight.detach()} for t, m in fts.items()}
    path = save_switches(
        tmp_path / "bank.safetensors", sws, pretrained=pre.state_dict(), layout=layout, extras=heads
    )
    f = load_switches(path)
    assert list(f.switches) == list(sws)
    for t, sw in sws.items():
        got = f.switches[t]
        assert got.scales == pytest.approx(sw.scales, rel=1e-7)
        assert all(torch.equal(got.signs[n], sw.signs[n]) for n in sw.signs)
        assert all(torch.equal(got.passthrough[n], sw.passthrough[n]) for n in sw.passthrough)
        assert torch.equal(f.extras[t]["classifier.weight"], heads[t]["classifier.weight"])
    assert all(torch.equal(f.pretrained[n], v) for n, v in pre.state_dict().items())
    rep = storage_report(sws, layout=layout, file_path=path)
    assert rep["total"]["file_bytes_without_pretrained"] > rep["total"]["payload_bytes"]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_switches(tmp_path / "missing.safetensors")
    from papers_shared.checkpoints import save_safetensors

    save_safetensors({"x": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="not a t-switch switch file"):
        load_switches(tmp_path / "foreign.safetensors")
    with pytest.raises(ValueError, match="task names"):
        save_switches(tmp_path / "x.safetensors", {"a/b": BinarySwitch({}, {})})


def test_storage_report_numbers():
    S = torch.tensor([1, 0, 0, -1, 0, 0, 0, 0, 0, 1, 0, 0], dtype=torch.int8)
    sw = BinarySwitch({"w": S}, {"w": 0.5}, {"b": torch.tensor(0.1)})
    rep = storage_report({"t": sw}, group_size=4, layout="planar")["total"]
    assert rep["bits"] == 14 and rep["numel"] == 12 and rep["nnz"] == 3
    assert rep["bits_per_entry"] == pytest.approx(14 / 12)
    assert rep["pct_fp32_bits"] == pytest.approx(100 * 14 / (32 * 12))
    assert rep["pct_fp16_bits"] == pytest.approx(2 * rep["pct_fp32_bits"])
    assert rep["payload_bytes"] == 2
    assert rep["total_bytes"] == 2 + 4 + 4  # payload + lambda + passthrough scalar
    d = 3 / 12
    h = -d * math.log2(d) - (1 - d) * math.log2(1 - d)
    assert rep["entropy_bits_per_entry"] == pytest.approx(h + d)
    rep2 = storage_report({"t": sw}, group_size=4, model_numel=13)["total"]
    assert rep2["pct_of_models"] == pytest.approx(100 * rep2["total_bytes"] / (4 * 13))
