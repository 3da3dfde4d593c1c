"""The pipeline: source -> declared state -> plan -> apply -> verify, run in the controller and its
workers."""

__all__: list[str] = []
