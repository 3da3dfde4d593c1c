"""Code that runs inside worker processes, never in the long-lived gitops process.

pyinfra, testinfra and pytest keep process-global state and module caches, so each run of
them gets a fresh ``python -m gitops.workers.<name>`` process. Only the parent-side stage
modules (``gitops.pipeline.apply``, ``gitops.pipeline.verify``) start these workers; nothing else
imports them.
Each worker reads one JSON document on stdin, writes one on stdout and progress on stderr.
"""
