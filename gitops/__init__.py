"""gitops: a GitOps reconciler for plain Linux hosts.

The pipeline is the architecture: source -> load (declared state) -> plan -> apply ->
verify -> record. Each stage is a module of this package; ``reconcile`` runs them in order.
"""

__version__ = "0.1.0"
