"""gitops: a GitOps reconciler for plain Linux hosts.

The pipeline is the architecture: source -> load (declared state) -> plan -> apply ->
verify -> record. The packages follow it, each layer importing only those below it
(kept by the import-linter contract in ``pyproject.toml``): ``cli`` > ``web`` > ``daemon`` >
``report`` > ``pipeline`` (``pipeline.reconcile`` runs the stages in order) > ``record`` >
the root modules every layer shares (``errors``, ``model``, ``records``, ``settings``, ...).
``workers`` are the processes that run pyinfra and testinfra; ``lab`` is a host source.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
