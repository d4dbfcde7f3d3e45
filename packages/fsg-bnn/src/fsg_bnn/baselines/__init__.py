"""The paper's baselines: STE (torch Adam/SGD through :func:`fsg_bnn.build_optimizer`) and the
MetaQuant hypernetworks (:class:`MetaQuantOptimizer`)."""

from fsg_bnn.baselines.metaquant import MetaQuantOptimizer

__all__ = ["MetaQuantOptimizer"]
