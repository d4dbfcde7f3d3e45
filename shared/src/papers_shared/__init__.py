"""papers_shared: the thin shared library of the papers workspace.

Modules: ``data`` (datasets, loaders), ``sessions`` (incremental splits), ``metrics``, ``device``
(device choice, seeding, timing, memory), ``checkpoints`` (atomic save, safe load, resume), ``config``
(typed, validated YAML configs), ``cli`` (the command line every package uses), ``errors`` (the errors a
user can act on), ``distributed`` (torchrun/accelerate helpers), ``ssm`` (selective scan and SSM layers),
``attacks`` (adversarial-attack primitives), ``mllm`` (multimodal LLM interface), ``results`` and
``reproduce`` (quick reproductions), ``testing`` (test helpers). No method code of any paper lives here.
"""

__version__ = "0.1.0"
