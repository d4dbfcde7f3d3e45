"""papers_shared: the thin shared library of the papers workspace.

Modules: ``data`` (datasets, loaders), ``sessions`` (incremental splits), ``metrics``, ``device``
(device choice, seeding, timing, memory), ``checkpoints`` (atomic save, resume), ``config`` (typed YAML
configs), ``kernels`` (selective scan), ``attacks`` (adversarial-attack primitives), ``results`` and
``reproduce`` (quick reproductions). No method code of any paper lives here.
"""

__version__ = "0.1.0"
