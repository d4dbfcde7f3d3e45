"""The SSM layers of papers_shared.ssm.modules: kernels against direct formulas, convolution == recurrence
== step-by-step decoding (with an input modulation installed), the real-diagonal variants against
per-step references, and the input-modulation hook."""

import math

import pytest
import torch
from torch import nn

from papers_shared.ssm.modules import (
    S4D,
    S5,
    Mamba,
    causal_fft_conv,
    direct_causal_conv,
    hippo_legs,
    hippo_normal_eig,
    linear_scan,
    tag,
    vandermonde_kernel,
)
from papers_shared.ssm.ops import selective_scan


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these tensors are tiny and the machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def f64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


class CausalGate(nn.Module):
    """A test modulation: ``v_k = (1 + a u_k + b u_{k-1}) u_k`` per channel, with a streaming step."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(d) * 0.3)
        self.b = nn.Parameter(torch.randn(d) * 0.3)

    def forward(self, u):
        prev = torch.cat([torch.zeros_like(u[:, :1]), u[:, :-1]], dim=1)
        return (1 + self.a * u + self.b * prev) * u

    def allocate_cache(self, batch_size, device, dtype):
        return torch.zeros(batch_size, self.a.shape[0], device=device, dtype=dtype)

    def step(self, u_t, cache):
        return (1 + self.a * u_t + self.b * cache) * u_t, u_t.clone()


def decode(layer, u, ts=None):
    state, outs = None, []
    for t in range(u.shape[1]):
        y, state = layer.step(u[:, t], state, None if ts is None else ts[:, t])
        outs.append(y)
    return torch.stack(outs, 1)


def gated(layer, d):
    layer.set_modulation(CausalGate(d))
    return layer


# ------------------------------------------------------------------------------------------ functional
@pytest.mark.parametrize("L,Lk", [(64, 64), (50, 17), (7, 30)])
def test_fft_conv_equals_direct(L, Lk, f64):
    u, k, D = torch.randn(3, 4, L), torch.randn(4, Lk), torch.randn(4)
    assert (causal_fft_conv(u, k, D) - (direct_causal_conv(u, k) + u * D[:, None])).abs().max() < 1e-10


@pytest.mark.parametrize("mode", ["assoc", "chunked"])
@pytest.mark.parametrize("L", [1, 2, 31, 64])
def test_linear_scan_modes_equal_loop_complex(mode, L):
    g = torch.Generator().manual_seed(L)
    a = torch.complex(
        torch.rand(2, L, 5, generator=g, dtype=torch.float64),
        torch.randn(2, L, 5, generator=g, dtype=torch.float64),
    )
    a = a / a.abs() * torch.rand(2, L, 5, generator=g, dtype=torch.float64)
    b = torch.randn(2, L, 5, generator=g, dtype=torch.complex128)
    h0 = torch.randn(2, 5, generator=g, dtype=torch.complex128)
    ref = linear_scan(a, b, h0, mode="loop")
    assert (linear_scan(a, b, h0, mode=mode) - ref).abs().max() < 1e-12
    assert (linear_scan(a[:1, :1], b, mode=mode) - linear_scan(a[:1, :1], b, mode="loop")).abs().max() < 1e-12


def test_linear_scan_gradients_match_and_errors(f64):
    a = (torch.rand(1, 20, 3) * 0.9).requires_grad_()
    b = torch.randn(1, 20, 3, requires_grad=True)
    grads = [
        torch.autograd.grad(linear_scan(a, b, mode=m).pow(2).sum(), (a, b))
        for m in ("loop", "assoc", "chunked")
    ]
    for ga, gb in grads[1:]:
        assert torch.allclose(ga, grads[0][0]) and torch.allclose(gb, grads[0][1])
    with pytest.raises(ValueError, match="scan mode"):
        linear_scan(torch.ones(1, 3, 2), torch.ones(1, 3, 2), mode="fft")
    with pytest.raises(ValueError, match="broadcast"):
        linear_scan(torch.ones(1, 3, 4), torch.ones(1, 3, 2))


def test_vandermonde_kernel_complex_pairs_and_real(f64):
    coef = torch.randn(2, 5, dtype=torch.complex128)
    dtA = torch.complex(-torch.rand(2, 5), torch.randn(2, 5))
    l = torch.arange(50)
    direct = (coef[..., None] * torch.exp(dtA[..., None] * l)).sum(1)
    assert (vandermonde_kernel(coef, dtA, 50) - 2 * direct.real).abs().max() < 1e-12
    rc, ra = torch.randn(2, 5), -torch.rand(2, 5)
    direct = (rc[..., None] * torch.exp(ra[..., None] * l)).sum(1)
    assert (vandermonde_kernel(rc, ra, 50, conj_pairs=False) - direct).abs().max() < 1e-12


def test_hippo_normal_part_is_diagonalised():
    A, P, _ = hippo_legs(8)
    lam, V = hippo_normal_eig(8)
    S = (A + P[:, None] * P[None, :]).to(torch.complex128)
    assert (V @ torch.diag(lam) @ V.conj().T - S).abs().max() < 1e-10
    assert torch.allclose(lam.real, torch.full((8,), -0.5, dtype=torch.float64)) and (lam.imag[:4] > 0).all()


# ------------------------------------------------------------------------------------------------ S4D
def test_s4d_lin_kernel_matches_closed_form(f64):
    layer = S4D(3, 6)
    A = torch.complex(-torch.exp(layer.log_A_real), layer.A_imag)
    dt = torch.exp(layer.log_dt)[:, None]
    C = torch.view_as_complex(layer.C)[0]
    l = torch.arange(37)
    ref = (
        2
        * (
            C[..., None]
            * ((torch.exp(dt * A) - 1) / A)[..., None]
            * torch.exp(dt[..., None] * A[..., None] * l)
        )
        .sum(1)
        .real
    )
    assert (layer.kernel(37)[0] - ref).abs().max() < 1e-12


@pytest.mark.parametrize("init", ["lin", "real"])
@pytest.mark.parametrize("output", ["none", "gelu_glu"])
def test_s4d_conv_equals_recurrence_and_decoding_with_modulation(init, output, f64):
    layer = gated(S4D(4, 8, init=init, output=output), 4)
    u = torch.randn(2, 40, 4)
    y = layer(u, mode="conv")
    assert (y - layer(u, mode="recurrent")).abs().max() < 1e-9
    assert (y - decode(layer, u)).abs().max() < 1e-9
    layer.set_modulation(None)
    assert (layer(u) - y).abs().max() > 1e-4  # the modulation was in the state update


def test_s4d_real_equals_a_per_step_zoh_recurrence(f64):
    """S4D-Real against x_k = exp(dt A) x_{k-1} + (exp(dt A) - 1)/A B u_k, y = C x + D u, then
    GLU(Linear(GELU(y))) - the layer fsg-bnn's slow net uses (its S4DLayer)."""
    H, N = 3, 5
    layer = S4D(H, N, init="real", c_scale=0.5 / math.sqrt(N), output="gelu_glu")
    with torch.no_grad():
        layer.B.uniform_(0.5, 1.5)
    u = torch.randn(2, 30, H)
    A, dt = -torch.exp(layer.A_log), torch.exp(layer.log_dt)[:, None]
    x, ys = torch.zeros(2, H, N), []
    for k in range(30):
        x = torch.exp(dt * A) * x + torch.expm1(dt * A) / A * layer.B * u[:, k, :, None]
        ys.append((x * layer.C[0]).sum(-1) + layer.D * u[:, k])
    ref = torch.nn.functional.glu(layer.output_linear(torch.nn.functional.gelu(torch.stack(ys, 1))), dim=-1)
    assert (layer(u) - ref).abs().max() < 1e-10
    # a state dict with C stored without its direction axis (H, N) loads into the one-direction layer
    sd = {k: v.clone() for k, v in layer.state_dict().items()}
    sd["C"] = sd["C"][0]
    other = S4D(H, N, init="real", output="gelu_glu")
    other.load_state_dict(sd)
    assert torch.equal(other(u), layer(u))


def test_s4d_bidirectional_rescaled_grid_and_causality(f64):
    layer = S4D(4, 8, bidirectional=True)
    layer.set_modulation(CausalGate(4), CausalGate(4))
    u = torch.randn(2, 33, 4)
    assert (layer(u, mode="conv") - layer(u, mode="recurrent")).abs().max() < 1e-9
    with pytest.raises(RuntimeError, match="future"):
        layer.step(u[:, 0])
    causal = gated(S4D(3, 8), 3)
    u = torch.randn(2, 20, 3)
    ts = torch.tensor([[1.5], [0.5]]).expand(2, 20)
    assert (causal(u, ts, mode="conv") - causal(u, ts, mode="recurrent")).abs().max() < 1e-9
    jitter = torch.rand(2, 20) + 0.5
    with pytest.raises(ValueError, match="time-invariant"):
        causal(u, jitter, mode="conv")
    assert (causal(u, jitter) - decode(causal, u, jitter)).abs().max() < 1e-9
    u2 = u.clone()
    u2[:, 12:] += 1.0
    y, y2 = causal(u), causal(u2)
    assert (y[:, :12] - y2[:, :12]).abs().max() < 1e-12 and (y[:, 12:] - y2[:, 12:]).abs().max() > 1e-3


def test_s4d_input_errors_and_transposed_layout(f64):
    layer = S4D(4, 8)
    u = torch.randn(2, 10, 4)
    with pytest.raises(ValueError, match="strictly positive"):
        layer(u, torch.zeros(2, 10))
    with pytest.raises(ValueError, match="timesteps must be"):
        layer(u, torch.ones(3, 10))
    with pytest.raises(TypeError, match="floating"):
        layer(u, torch.ones(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN/inf"):
        layer(u, torch.tensor(float("nan")).expand(2, 10))
    with pytest.raises(ValueError, match="channels=4"):
        layer(torch.randn(2, 10, 3))
    with pytest.raises(ValueError, match="even"):
        S4D(4, 7)
    with pytest.raises(ValueError, match="init"):
        S4D(4, 8, init="inv")
    with pytest.raises(ValueError, match="bidirectional"):
        S4D(4, 8).set_modulation(CausalGate(4), CausalGate(4))
    t = gated(S4D(4, 8, transposed=True), 4)
    y = t(u.transpose(1, 2))
    t.transposed = False
    assert (y - t(u).transpose(1, 2)).abs().max() < 1e-12


# ------------------------------------------------------------------------------------------------- S5
@pytest.mark.parametrize("init", ["hippo", "real"])
@pytest.mark.parametrize("scan_mode", ["loop", "assoc", "chunked"])
def test_s5_scan_modes_conv_form_and_decoding(init, scan_mode, f64):
    layer = gated(S5(4, 8, blocks=2, init=init, scan_mode=scan_mode), 4)
    u = torch.randn(2, 25, 4)
    ts = torch.full((2, 25), 1.3)
    assert (layer(u, ts) - layer(u, ts, mode="conv")).abs().max() < 1e-9
    ref = gated(S5(4, 8, blocks=2, init=init, scan_mode="loop"), 4)
    ref.load_state_dict(layer.state_dict())
    jitter = torch.rand(2, 25) + 0.5
    assert (layer(u, jitter) - ref(u, jitter)).abs().max() < 1e-12
    assert (layer(u, jitter) - decode(layer, u, jitter)).abs().max() < 1e-9
    assert (layer(u, jitter) - layer(u)).abs().max() > 1e-4


def test_s5_real_equals_a_per_step_reference_and_bidirectional(f64):
    """Real S5 against x_k = exp(dt A) x_{k-1} + (exp(dt A) - 1)/A (B u_k), y = C x + D u (fsg-bnn's S5Layer)."""
    H, P = 3, 4
    layer = S5(H, P, init="real")
    u = torch.randn(2, 20, H)
    A, dt = -torch.exp(layer.A_log), torch.exp(layer.log_dt)
    x, ys = torch.zeros(2, P), []
    for k in range(20):
        x = torch.exp(dt * A) * x + torch.expm1(dt * A) / A * (u[:, k] @ layer.B.T)
        ys.append(x @ layer.C[0].T + layer.D * u[:, k])
    assert (layer(u) - torch.stack(ys, 1)).abs().max() < 1e-10
    bi = S5(4, 8, bidirectional=True)
    bi.set_modulation(CausalGate(4), CausalGate(4))
    u = torch.randn(2, 16, 4)
    assert (bi(u) - bi(u, mode="conv")).abs().max() < 1e-9


# ---------------------------------------------------------------------------------------------- Mamba
@pytest.mark.parametrize("position", ["pre_proj", "scan_only"])
@pytest.mark.parametrize("skip_modulated", [False, True])
def test_mamba_full_sequence_equals_token_by_token(position, skip_modulated, f64):
    layer = Mamba(8, d_state=4, modulation_position=position)
    layer.set_modulation(CausalGate(layer.d_inner), skip_modulated=skip_modulated)
    u = torch.randn(2, 15, 8)
    ts = torch.rand(2, 15) + 0.5
    for t in (None, ts):
        y = layer(u, t)
        assert (y - decode(layer, u, t)).abs().max() < 1e-9
        layer.backend = "ref"
        assert (y - layer(u, t)).abs().max() < 1e-9
        layer.backend = "auto"


def test_mamba_without_modulation_is_the_fused_selective_scan_block(f64):
    """The plain block equals in_proj -> conv+SiLU -> x_proj/dt_proj -> selective_scan(D, z, bias,
    softplus) -> out_proj written out directly (fsg-bnn's MambaBlock), for both dt initialisations."""
    for dt_init in ("random", "constant"):
        layer = Mamba(2, d_state=4, d_conv=8, expand=6, dt_init=dt_init)
        h = torch.randn(3, 12, 2)
        x, z = layer.in_proj(h).transpose(1, 2).chunk(2, dim=1)
        x = torch.nn.functional.silu(layer.conv1d(x)[..., :12])
        dt, B, C = layer.x_proj(x.transpose(1, 2)).split([layer.dt_rank, 4, 4], dim=-1)
        y = selective_scan(
            x, (dt @ layer.dt_proj.weight.t()).transpose(1, 2), -torch.exp(layer.A_log),
            B.transpose(1, 2), C.transpose(1, 2), layer.D, z=z, delta_bias=layer.dt_proj.bias, delta_softplus=True,
        )  # fmt: skip
        assert (layer(h) - layer.out_proj(y.transpose(1, 2))).abs().max() < 1e-12
    with pytest.raises(ValueError, match="modulation_position"):
        Mamba(8, modulation_position="post")
    with pytest.raises(ValueError, match="backend"):
        Mamba(8, backend="triton")


# ---------------------------------------------------------------------------------------------- hooks
def test_identity_modulation_equals_none_and_tags(f64):
    for make in (lambda: S4D(4, 8), lambda: S5(4, 8), lambda: Mamba(4, d_state=4)):
        torch.manual_seed(1)
        plain = make()
        torch.manual_seed(1)
        ident = make()
        ident.set_modulation(nn.Identity())
        u = torch.randn(2, 12, 4)
        assert torch.equal(plain(u), ident(u))
    groups = {name: getattr(p, "_optim_group", None) for name, p in S4D(4, 8).named_parameters()}
    assert groups == {"log_dt": "ssm", "log_A_real": "ssm", "A_imag": "ssm", "C": None, "D": None}
    assert {getattr(p, "_optim_group", None) for p in Mamba(4).parameters()} == {None, "no_decay"}
    with pytest.raises(ValueError, match="non-empty"):
        tag(nn.Parameter(torch.zeros(1)), "")
    with pytest.raises(TypeError, match="callable"):
        S4D(4, 8).set_modulation(3)
    with pytest.raises(RuntimeError, match="step"):  # nn.Identity has no streaming step
        S4D(4, 8, modulation=nn.Identity()).step(torch.randn(2, 4))
