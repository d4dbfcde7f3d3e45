import pytest
import torch

from papers_shared.errors import InputError
from t_switch import UnexpectedKeysWarning, task_vector
from t_switch.data import classify_source, digits_domains, resolve_model


@pytest.mark.parametrize(
    "arg, local",
    [
        ("/data/x/missing.pt", True),
        ("./ckpt", True),
        ("~/weights", True),
        ("missing.pt", True),
        ("model.safetensors", True),
        ("a/b/c", True),
        ("has space/x", True),
        ("openai/clip-vit-base-patch32", False),
        ("roberta-base", False),
    ],
)
def test_classify_source_by_form(arg, local):
    assert classify_source(arg)[0] is local


def test_resolve_model_says_which(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"file not found: .*missing\.pt \(read as a local path because"
    ):
        resolve_model(str(tmp_path / "missing.pt"))
    (tmp_path / "m").mkdir()
    assert resolve_model(str(tmp_path / "m")) == str(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="sub-folder 'cola'"):
        resolve_model(str(tmp_path / "m"), "cola")


def test_unexpected_keys_are_reported(tiny):
    pre, fts = tiny
    ft = dict(fts["t0"].state_dict())
    ft["adapter.weight"] = torch.zeros(3)
    with pytest.warns(UnexpectedKeysWarning, match="adapter.weight"):
        tv = task_vector(pre, ft)
    assert "adapter.weight" not in tv
    with pytest.raises(InputError, match="adapter.weight"):
        task_vector(pre, ft, unexpected="error")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task_vector(pre, ft, unexpected="ignore")
        task_vector(pre, fts["t0"])  # nothing unexpected: no warning


def test_digits_domains_splits_are_disjoint():
    data = digits_domains(0.2)
    n = {s: data[s]["hflip"][0].shape[0] for s in ("train", "val", "test")}
    assert sum(n.values()) == 1797 and n["test"] == pytest.approx(540, abs=10)
    assert n["val"] == pytest.approx(0.2 * (n["train"] + n["val"]), abs=10)
    assert torch.allclose(data["val"]["invert"][0], 1 - data["val"]["original"][0])
