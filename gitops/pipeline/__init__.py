"""The pipeline: source -> declared state -> plan -> apply -> verify, run in the controller and its
workers."""
