import pytest
import torch

from sr_cis.scenario import DiffusersSDXLGenerator, GaussianPixelGenerator, build_generator, replay_seed
from sr_cis.text_memory import TextMemory


def test_text_memory_round_trip_and_bytes(tmp_path):
    tm = TextMemory()
    tm.add(3, "a cat on a sofa", name="cat")
    tm.add(3, "ünïcode scène")
    tm.add(1, "a dog", name="dog")
    assert tm.nbytes() == sum(
        len(s.encode()) for s in ["a cat on a sofa", "ünïcode scène", "a dog", "cat", "dog"]
    )
    tm.save(tmp_path / "t.json")
    tm2 = TextMemory.load(tmp_path / "t.json")
    assert tm2.texts == tm.texts and tm2.names == tm.names and tm2.nbytes() == tm.nbytes()
    with pytest.raises(FileNotFoundError):
        TextMemory.load(tmp_path / "missing.json")
    with pytest.raises(KeyError):
        tm.for_class(9)
    with pytest.raises(TypeError):
        tm.add(1, 5)


def test_gaussian_generator_statistics_and_seeds():
    g = torch.Generator().manual_seed(0)
    x = (0.5 + 0.1 * torch.randn(200, 1, 4, 4, generator=g)).clamp(0, 1)
    gen = GaussianPixelGenerator(rank=4)
    gen.fit("cat", x)
    seeds = [replay_seed(0, i) for i in range(300)]
    out = gen.generate(["cat, a scene"] * 300, seeds)
    assert out.shape == (300, 1, 4, 4)
    assert torch.allclose(out.mean(0), x.mean(0), atol=0.03)
    assert torch.equal(gen.generate(["cat"], [5]), gen.generate(["a photo of a cat"], [5]))
    with pytest.raises(KeyError, match="no fitted class"):
        gen.generate(["dog"], [0])
    with pytest.raises(ValueError, match="seeds"):
        gen.generate(["cat"], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        gen.fit("bad", torch.full((2, 1, 4, 4), float("nan")))
    assert replay_seed(3, 1) != replay_seed(1, 3)


def test_sdxl_needs_diffusers_extra():
    try:
        import diffusers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"sr-cis\[diffusion\]"):
            DiffusersSDXLGenerator()
    else:  # pragma: no cover - only where diffusers is installed
        pytest.skip("diffusers is installed; the missing-extra error cannot be triggered")


def test_sdxl_argument_plumbing_with_mock_pipeline():
    from PIL import Image

    class Pipe:
        def __init__(self):
            self.calls = []

        def __call__(self, **kw):
            self.calls.append(kw)

            class R:
                images = [Image.new("RGB", (64, 64), (255, 0, 0))]

            return R()

    pipe = Pipe()
    gen = DiffusersSDXLGenerator(pipeline=pipe, gen_size=64, out_size=8)
    out = gen.generate(["cat, on a mat", "dog"], [1, 2])
    assert out.shape == (2, 3, 8, 8) and torch.allclose(out[:, 0], torch.ones(2, 8, 8))
    kw = pipe.calls[0]
    assert kw["prompt"] == "cat, on a mat" and kw["num_inference_steps"] == 30 and kw["guidance_scale"] == 7.0
    assert kw["height"] == kw["width"] == 64 and kw["generator"].initial_seed() == 1


def test_build_generator_kinds():
    from sr_cis.config import GeneratorConfig

    assert isinstance(build_generator(GeneratorConfig(kind="gaussian")), GaussianPixelGenerator)
    cfg = GeneratorConfig()
    cfg.kind = "vae"
    with pytest.raises(ValueError, match="unknown generator"):
        build_generator(cfg)


def test_malformed_text_memory_is_an_input_error(tmp_path):
    from papers_shared.errors import InputError

    p = tmp_path / "t.json"
    p.write_text("{not json")
    with pytest.raises(InputError, match="t.json"):
        TextMemory.load(p)
    p.write_text('{"texts": {"3": ["ok", 5]}}')
    with pytest.raises(InputError, match=r"texts\['3'\]"):
        TextMemory.load(p)
