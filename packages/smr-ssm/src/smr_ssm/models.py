"""transformers-compatible models (ours): ``SSMConfig`` / ``SSMModel`` / ``SSMForCausalLM`` (the paper's
WikiText-103 language modelling), ``SSMForSequenceClassification`` (its Long Range Arena heads) and
``SSMForSequenceRegression`` (per-position regression, our sampling-shift experiment).

Every block's host gets SMR from ``config.smr`` (``None`` = the baseline without SMR, identical otherwise).
The classes are registered with ``AutoConfig``/``AutoModel``/``AutoModelForCausalLM``/
``AutoModelForSequenceClassification`` (``model_type="smr_ssm"``), save with ``save_pretrained`` and
train with ``transformers.Trainer``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput, SequenceClassifierOutput

from papers_shared.ssm.modules import check_finite
from smr_ssm.blocks import build_blocks, host_kwargs, make_norm
from smr_ssm.layers import LAYER_TYPES
from smr_ssm.smr import StateMemoryReplay, resolve_smr

__all__ = [
    "SSMConfig",
    "SSMForCausalLM",
    "SSMForSequenceClassification",
    "SSMForSequenceRegression",
    "SSMModel",
    "SSMPreTrainedModel",
    "smr_modules",
    "smr_scale_stats",
]


class SSMConfig(PretrainedConfig):
    """Configuration of the SSM models (ours).

    Core fields: ``vocab_size, d_model, n_layer, layer_type`` (``"s4d"``, ``"s4"``, ``"s5"``, ``"mamba"``,
    ``"mega"``, ``"mega_ema"``, ``"spade"``), ``smr`` (preset name, dict or ``None`` for the baseline),
    ``dropout``, ``tie_embeddings``. Host options: ``d_state`` (``None``: 64 for S4/S4D/S5/SPADE, 16 for
    Mamba, the EMA dimension 16 for Mega), ``dt_min, dt_max``, ``smr_position, d_conv, expand, dt_rank,
    scan_backend`` (Mamba), ``s5_blocks``, ``mega_chunk, mega_attention``, ``spade_window, n_heads``.
    Block: ``norm, prenorm, mixer_output, ffn, ffn_expand, bidirectional``. Inputs/heads: ``encoder``
    (``"embedding"`` or ``"linear"`` with ``input_dim``), ``pooling`` (``"mean"``, ``"last"``), ``dual``
    (two-document retrieval head), ``output_dim`` (regression).
    """

    model_type = "smr_ssm"
    attribute_map = {"num_hidden_layers": "n_layer", "hidden_size": "d_model"}

    def __init__(
        self,
        vocab_size: int = 50,
        d_model: int = 64,
        n_layer: int = 2,
        layer_type: str = "s4d",
        smr: Any = "default",
        dropout: float = 0.0,
        tie_embeddings: bool = True,
        d_state: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        smr_position: str = "pre_proj",
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        scan_backend: str = "auto",
        s5_blocks: int = 1,
        mega_chunk: int | None = None,
        mega_attention: bool = True,
        spade_window: int = 128,
        n_heads: int = 4,
        norm: str = "layernorm",
        prenorm: bool = True,
        mixer_output: str = "auto",
        ffn: str = "none",
        ffn_expand: int = 4,
        bidirectional: bool = False,
        encoder: str = "embedding",
        input_dim: int = 1,
        output_dim: int = 1,
        pooling: str = "mean",
        dual: bool = False,
        initializer_range: float = 0.02,
        **kwargs,
    ) -> None:
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"unknown layer_type {layer_type!r}; valid: {sorted(LAYER_TYPES)}")
        if encoder not in ("embedding", "linear"):
            raise ValueError(f"encoder must be 'embedding' or 'linear', got {encoder!r}")
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        resolve_smr(smr)  # validate early: unknown presets/keys raise here
        self.vocab_size, self.d_model, self.n_layer, self.layer_type = (
            vocab_size,
            d_model,
            n_layer,
            layer_type,
        )
        self.smr, self.dropout = smr, dropout
        self.d_state, self.dt_min, self.dt_max = d_state, dt_min, dt_max
        self.smr_position, self.d_conv, self.expand, self.dt_rank, self.scan_backend = (
            smr_position,
            d_conv,
            expand,
            dt_rank,
            scan_backend,
        )
        self.s5_blocks, self.mega_chunk, self.mega_attention = s5_blocks, mega_chunk, mega_attention
        self.spade_window, self.n_heads = spade_window, n_heads
        self.norm, self.prenorm, self.mixer_output, self.ffn, self.ffn_expand = (
            norm,
            prenorm,
            mixer_output,
            ffn,
            ffn_expand,
        )
        self.bidirectional, self.encoder, self.input_dim, self.output_dim = (
            bidirectional,
            encoder,
            input_dim,
            output_dim,
        )
        self.pooling, self.dual, self.initializer_range = pooling, dual, initializer_range
        kwargs.setdefault("use_cache", False)
        kwargs.setdefault("tie_word_embeddings", tie_embeddings)
        super().__init__(**kwargs)

    @property
    def tie_embeddings(self) -> bool:
        return bool(self.tie_word_embeddings)

    def layer_kwargs(self) -> dict[str, Any]:
        """The host's constructor options for ``layer_type``."""
        return host_kwargs(
            self.layer_type,
            self.d_state,
            self.dt_min,
            self.dt_max,
            self.smr_position,
            self.d_conv,
            self.expand,
            self.dt_rank,
            self.scan_backend,
            self.s5_blocks,
            self.mega_chunk,
            self.mega_attention,
            self.spade_window,
            self.n_heads,
        )


class SSMPreTrainedModel(PreTrainedModel):
    config_class = SSMConfig
    base_model_prefix = "model"
    _no_split_modules = ["SSMBlock"]
    supports_gradient_checkpointing = False
    main_input_name = "input_ids"

    def _init_weights(self, module: nn.Module) -> None:
        """The hosts initialise themselves (S4D-Lin, HiPPO, Mamba's ``dt`` init ...); only embeddings
        and the heads' linear layers get the usual ``N(0, initializer_range)``."""
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, nn.Linear) and getattr(module, "_smr_head", False):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class SSMModel(SSMPreTrainedModel):
    """Encoder (token embedding or linear), ``n_layer`` :class:`~smr_ssm.blocks.SSMBlock`, final norm."""

    def __init__(self, config: SSMConfig) -> None:
        super().__init__(config)
        d = config.d_model
        if config.encoder == "embedding":
            self.embeddings = nn.Embedding(config.vocab_size, d)
        else:
            self.embeddings = nn.Linear(config.input_dim, d)
        self.layers = build_blocks(
            config.n_layer,
            d,
            config.layer_type,
            config.layer_kwargs(),
            smr=config.smr,
            bidirectional=config.bidirectional,
            norm=config.norm,
            prenorm=config.prenorm,
            mixer_output=config.mixer_output,
            ffn=config.ffn,
            ffn_expand=config.ffn_expand,
            dropout=config.dropout,
        )
        self.norm_f = make_norm(config.norm, d) if config.prenorm else nn.Identity()
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings if self.config.encoder == "embedding" else None

    def set_input_embeddings(self, value):
        self.embeddings = value

    def embed(self, input_ids=None, input_values=None, inputs_embeds=None) -> torch.Tensor:
        given = [x is not None for x in (input_ids, input_values, inputs_embeds)]
        if sum(given) != 1:
            raise ValueError("pass exactly one of input_ids, input_values or inputs_embeds")
        if inputs_embeds is not None:
            if inputs_embeds.ndim != 3 or inputs_embeds.shape[-1] != self.config.d_model:
                raise ValueError(
                    f"inputs_embeds must be (batch, length, {self.config.d_model}); got {tuple(inputs_embeds.shape)}"
                )
            check_finite(inputs_embeds, "inputs_embeds")
            return inputs_embeds
        if input_ids is not None:
            if self.config.encoder != "embedding":
                raise ValueError(
                    "this model has a linear encoder: pass input_values (batch, length, input_dim)"
                )
            if input_ids.dtype not in (torch.int32, torch.int64) or input_ids.ndim != 2:
                raise ValueError(
                    f"input_ids must be an integer tensor (batch, length); got {input_ids.dtype} {tuple(input_ids.shape)}"
                )
            if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
                raise ValueError(f"input_ids out of range [0, {self.config.vocab_size})")
            return self.embeddings(input_ids)
        if self.config.encoder != "linear":
            raise ValueError("this model has a token embedding: pass input_ids")
        if (
            input_values.ndim != 3
            or input_values.shape[-1] != self.config.input_dim
            or not input_values.is_floating_point()
        ):
            raise ValueError(
                f"input_values must be float (batch, length, {self.config.input_dim}); got {input_values.dtype} {tuple(input_values.shape)}"
            )
        check_finite(input_values, "input_values")
        return self.embeddings(input_values)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> BaseModelOutput:
        x = self.embed(input_ids, input_values, inputs_embeds)
        mask = attention_mask if (attention_mask is not None and self.config.bidirectional) else None
        hidden = [x] if output_hidden_states else None
        for layer in self.layers:
            x = layer(x, timesteps, mask)
            if hidden is not None:
                hidden.append(x)
        x = self.norm_f(x)
        return BaseModelOutput(
            last_hidden_state=x, hidden_states=tuple(hidden) if hidden is not None else None
        )

    def allocate_state(self, batch_size: int, device=None, dtype=torch.float32) -> list:
        return [layer.allocate_state(batch_size, device, dtype) for layer in self.layers]

    def step(self, x_t: torch.Tensor, states: list, timestep: torch.Tensor | None = None):
        """One position of already-embedded input ``(B, d)`` through all blocks (recurrent mode)."""
        for i, layer in enumerate(self.layers):
            x_t, states[i] = layer.step(x_t, states[i], timestep)
        return self.norm_f(x_t), states


class SSMForCausalLM(SSMPreTrainedModel, GenerationMixin):
    """Causal LM (ours, S4-style): blocks -> final norm -> (tied) LM head; next-token cross-entropy."""

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config: SSMConfig) -> None:
        super().__init__(config)
        if config.encoder != "embedding":
            raise ValueError("SSMForCausalLM needs encoder='embedding'")
        if config.bidirectional:
            raise ValueError("SSMForCausalLM needs causal blocks (bidirectional=False)")
        self.model = SSMModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()
        if self.generation_config is not None:
            self.generation_config.use_cache = False

    def get_input_embeddings(self):
        return self.model.embeddings

    def set_input_embeddings(self, value):
        self.model.embeddings = value

    def get_output_embeddings(self):
        return self.lm_head

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, **kwargs) -> dict[str, Any]:
        """``generate`` reruns the (convolution-mode) model on the whole prefix: the hosts' recurrent
        states are not transformers ``Cache`` objects (see :meth:`generate_recurrent` for O(1) decoding)."""
        return {"input_ids": input_ids}

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutput:
        """``labels`` are the inputs (shifted inside); ``-100`` is ignored."""
        out = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, timesteps=timesteps)
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(
                    f"labels must be (batch, length) = {tuple(logits.shape[:2])}; got {tuple(labels.shape)}"
                )
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        return CausalLMOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def generate_recurrent(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Decoding with the recurrent state of every block (``O(1)`` per token, SMR ring buffers
        included); returns prompt + new tokens. ``transformers``' ``generate`` also works (it reruns the
        convolution on the whole prefix)."""
        B = input_ids.shape[0]
        p = next(self.parameters())
        states = self.model.allocate_state(B, p.device, p.dtype)
        logits = None
        for t in range(input_ids.shape[1]):
            h, states = self.model.step(self.model.embeddings(input_ids[:, t]), states)
            logits = self.lm_head(h)
        out = [input_ids]
        for _ in range(max_new_tokens):
            if do_sample:
                scores = logits / max(temperature, 1e-6)
                if top_k:
                    kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
                    scores = scores.masked_fill(scores < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(scores.float(), -1), 1, generator=generator)
            else:
                nxt = logits.argmax(-1, keepdim=True)
            out.append(nxt)
            h, states = self.model.step(self.model.embeddings(nxt[:, 0]), states)
            logits = self.lm_head(h)
        return torch.cat(out, dim=1)


class SSMForSequenceClassification(SSMPreTrainedModel):
    """LRA head (ours, as the S4 repository's LRA models): blocks -> pooling over valid positions -> linear classifier; with
    ``config.dual`` (AAN retrieval) two documents ``(B, 2, L)`` share the encoder and the classifier
    reads ``[a, b, a * b, a - b]``."""

    def __init__(self, config: SSMConfig) -> None:
        super().__init__(config)
        self.model = SSMModel(config)
        d = config.d_model
        if config.dual:
            self.classifier = nn.Sequential(nn.Linear(4 * d, d), nn.GELU(), nn.Linear(d, config.num_labels))
        else:
            self.classifier = nn.Linear(d, config.num_labels)
        for m in self.classifier.modules():
            if isinstance(m, nn.Linear):
                m._smr_head = True
        self.post_init()

    def _pool(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return h.mean(1) if self.config.pooling == "mean" else h[:, -1]
        mask = mask.to(h.dtype)
        if self.config.pooling == "mean":
            return (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        last = (mask.sum(1).long() - 1).clamp(min=0)
        return h[torch.arange(h.shape[0], device=h.device), last]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        dual = self.config.dual
        if dual:
            x = input_ids if input_ids is not None else input_values
            if x is None or x.ndim < 3 or x.shape[1] != 2:
                raise ValueError(
                    "a dual (retrieval) model takes pairs: input of shape (batch, 2, length[, dim])"
                )
            B = x.shape[0]
            flat = lambda t: None if t is None else t.reshape(2 * B, *t.shape[2:])  # noqa: E731
            input_ids, input_values, attention_mask, timesteps = map(
                flat, (input_ids, input_values, attention_mask, timesteps)
            )
        out = self.model(
            input_ids=input_ids, input_values=input_values, timesteps=timesteps, attention_mask=attention_mask
        )
        pooled = self._pool(out.last_hidden_state, attention_mask)
        if dual:
            a, b = pooled.view(-1, 2, pooled.shape[-1]).unbind(1)
            pooled = torch.cat([a, b, a * b, a - b], dim=-1)
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


class SSMForSequenceRegression(SSMPreTrainedModel):
    """Per-position regression (our sampling-shift experiment): linear encoder -> blocks -> linear head;
    MSE loss against ``labels`` ``(B, L, output_dim)``."""

    main_input_name = "input_values"

    def __init__(self, config: SSMConfig) -> None:
        super().__init__(config)
        self.model = SSMModel(config)
        self.head = nn.Linear(config.d_model, config.output_dim)
        self.head._smr_head = True
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        timesteps: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ):
        out = self.model(input_values=input_values, timesteps=timesteps)
        pred = self.head(out.last_hidden_state)
        loss = None
        if labels is not None:
            if labels.shape != pred.shape:
                raise ValueError(f"labels must have shape {tuple(pred.shape)}; got {tuple(labels.shape)}")
            loss = F.mse_loss(pred, labels)
        return CausalLMOutput(loss=loss, logits=pred)


def smr_modules(model: nn.Module) -> dict[str, StateMemoryReplay]:
    """All SMR modules of a model by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, StateMemoryReplay)}


@torch.no_grad()
def smr_scale_stats(model: nn.Module, **inputs) -> dict[str, float]:
    """Learned-scale statistics per SMR module (ours; answers the precursor reviewers' question whether SMR acts as intended): ``smr/<name>/scale_mean``,
    ``scale_std`` and ``scale_neg_frac`` (fraction of negative scales) on one forward pass of ``inputs``."""
    mods = smr_modules(model)
    for m in mods.values():
        m.track_stats = True
    try:
        was_training = model.training
        model.eval()
        model(**inputs)
        model.train(was_training)
    finally:
        for m in mods.values():
            m.track_stats = False
    return {f"smr/{name}/{k}": v for name, m in mods.items() for k, v in m.last_stats.items()}


AutoConfig.register("smr_ssm", SSMConfig, exist_ok=True)
AutoModel.register(SSMConfig, SSMModel, exist_ok=True)
AutoModelForCausalLM.register(SSMConfig, SSMForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(SSMConfig, SSMForSequenceClassification, exist_ok=True)
