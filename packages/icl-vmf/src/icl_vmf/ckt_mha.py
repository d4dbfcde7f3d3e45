"""Class projector, CKT-MHA and the query embedding (paper Sec. 3, CKT-MHA;
official ``backbone/cvt_online.py:SelfAttentionMLP`` and ``Brain_Net_Vit.memory_map``, commit 8c8ad10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CKTMHA", "kaiming_linear_init", "query_embedding"]


def kaiming_linear_init(module: nn.Module) -> None:
    """Kaiming-normal (``nonlinearity="linear"``) weights and zero biases for every ``nn.Linear`` inside
    ``module`` (``Brain_Net_Vit.initialize_weights``; MHA's ``out_proj`` is an ``nn.Linear`` and is re-initialised too, its
    ``in_proj_weight`` keeps PyTorch's Xavier init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


def query_embedding(C: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``z = normalize(mean_tokens(concat[T, C]))`` (``Brain_Net_Vit.forward``: task part first, token mean,
    L2 norm)."""
    if C.shape[:2] != T.shape[:2]:
        raise ValueError(f"C {tuple(C.shape)} and T {tuple(T.shape)} differ in batch/token dimensions")
    return F.normalize(torch.cat([T, C], dim=-1).mean(dim=1), dim=-1)


class CKTMHA(nn.Module):
    """Class-Knowledge-Task multi-head attention with the class projector ``g_c`` (``SelfAttentionMLP``).

    ``forward(H) -> (C, T)`` token-wise on ``H [B, L, D]``::

        C = g_c(H)                       Linear(D, mult*D) -> GELU -> Linear(mult*D, d_class)
        Q = P_q(C)                       Linear(d_class, D)                       class features
        K = H                                                                     pre-trained knowledge
        V = P_v(H)                       Linear(D, D) -> GELU -> Linear(D, D)     task features
        T = P_o(MHA(Q, K, V))            Linear(D, D) -> GELU -> Linear(D, d_task)

    No residual and no LayerNorm. ``use_attention=False`` replaces the attention branch by a plain MLP
    ``T = Linear(D, mult*D) -> GELU -> Linear(mult*D, d_task)`` applied to ``H`` (the code's unused
    ``embedding_map``; ablation, ours).

    ``fused_inference`` [ours, default on]: in eval mode without autograd, :meth:`embed` uses an
    algebraically identical path that multiplies consecutive linear maps once (``g_c``'s output layer,
    ``P_q`` and MHA's query projection; ``P_v``'s output layer and MHA's value projection; MHA's output
    projection and ``P_o``'s first layer) and applies the last linear layers of both branches after the
    token mean, which the mean commutes with. Same numbers up to float rounding, fewer and smaller
    token-wise matmuls; the products are cached and rebuilt whenever a parameter changes.
    """

    def __init__(
        self,
        d_model: int,
        d_class: int,
        d_task: int,
        num_heads: int = 8,
        proj_mult: int = 4,
        use_attention: bool = True,
        fused_inference: bool = True,
    ) -> None:
        super().__init__()
        self.fused_inference = fused_inference
        self._fused: tuple | None = None
        self._fused_key: tuple | None = None
        if min(d_model, d_class, d_task, num_heads, proj_mult) < 1:
            raise ValueError("all CKTMHA sizes must be >= 1")
        if use_attention and d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.d_model, self.d_class, self.d_task = d_model, d_class, d_task
        self.use_attention = use_attention
        self.class_proj = _mlp(d_model, proj_mult * d_model, d_class)
        kaiming_linear_init(self.class_proj)
        if use_attention:
            self.q_proj = nn.Linear(d_class, d_model)
            self.v_proj = _mlp(d_model, d_model, d_model)
            self.attn = nn.MultiheadAttention(d_model, num_heads, batch_first=True)
            self.out_proj = _mlp(d_model, d_model, d_task)
            for m in (self.q_proj, self.v_proj, self.attn, self.out_proj):
                kaiming_linear_init(m)
        else:
            self.task_mlp = _mlp(d_model, proj_mult * d_model, d_task)
            kaiming_linear_init(self.task_mlp)

    @property
    def out_dim(self) -> int:
        return self.d_task + self.d_class

    def forward(self, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if H.ndim != 3 or H.shape[-1] != self.d_model:
            raise ValueError(f"expected token features [B, L, {self.d_model}], got shape {tuple(H.shape)}")
        C = self.class_proj(H)
        if not self.use_attention:
            return C, self.task_mlp(H)
        A, _ = self.attn(self.q_proj(C), H, self.v_proj(H), need_weights=False)
        return C, self.out_proj(A)

    query_embedding = staticmethod(query_embedding)

    def embed(self, H: torch.Tensor) -> torch.Tensor:
        """Unit-norm query embedding ``z``, ``[B, d_task + d_class]``."""
        if self.fused_inference and self.use_attention and not self.training and not torch.is_grad_enabled():
            return self._embed_fused(H)
        C, T = self(H)
        return query_embedding(C, T)

    def _fused_weights(self) -> tuple:
        params = [p for p in self.parameters()]
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        if self._fused_key != key:
            D = self.d_model
            W_in, b_in = self.attn.in_proj_weight, self.attn.in_proj_bias
            Wq_in, Wk_in, Wv_in = W_in[:D], W_in[D : 2 * D], W_in[2 * D :]
            bq_in, bk_in, bv_in = b_in[:D], b_in[D : 2 * D], b_in[2 * D :]
            c2, q, v2, o, o1 = (
                self.class_proj[2],
                self.q_proj,
                self.v_proj[2],
                self.attn.out_proj,
                self.out_proj[0],
            )
            Wq = Wq_in @ q.weight  # [D, d_c]
            fused_q = (Wq @ c2.weight, Wq @ c2.bias + Wq_in @ q.bias + bq_in)  # [D, mult*D]
            fused_v = (Wv_in @ v2.weight, Wv_in @ v2.bias + bv_in)
            fused_o = (o1.weight @ o.weight, o1.weight @ o.bias + o1.bias)
            self._fused = (fused_q, (Wk_in, bk_in), fused_v, fused_o)
            self._fused_key = key
        return self._fused

    def _embed_fused(self, H: torch.Tensor) -> torch.Tensor:
        if H.ndim != 3 or H.shape[-1] != self.d_model:
            raise ValueError(f"expected token features [B, L, {self.d_model}], got shape {tuple(H.shape)}")
        (Wq, bq), (Wk, bk), (Wv, bv), (Wo, bo) = self._fused_weights()
        B, L, D = H.shape
        h = self.attn.num_heads
        g = F.gelu(self.class_proj[0](H))  # [B, L, mult*D]
        c_mean = self.class_proj[2](g.mean(dim=1))  # the output layer commutes with the token mean
        q = F.linear(g, Wq, bq)
        k = F.linear(H, Wk, bk)
        v = F.linear(F.gelu(self.v_proj[0](H)), Wv, bv)
        heads = [t.view(B, L, h, D // h).transpose(1, 2) for t in (q, k, v)]
        A = F.scaled_dot_product_attention(*heads).transpose(1, 2).reshape(B, L, D)
        t_mean = self.out_proj[2](F.gelu(F.linear(A, Wo, bo)).mean(dim=1))
        return F.normalize(torch.cat([t_mean, c_mean], dim=-1), dim=-1)
