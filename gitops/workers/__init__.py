"""Code that runs inside worker processes, never in the long-lived gitops process.

pyinfra, testinfra and pytest keep process-global state and module caches, so each run of
them gets a fresh process: a child forked from the module's warm server (``forkserver``,
which imported it and never runs a job), else a ``python -m gitops.workers.<name>``. Only the
parent-side stage modules (``gitops.pipeline.apply``, ``gitops.pipeline.verify``) start these
workers; nothing else imports them.
Each worker reads one JSON document on stdin, writes one on stdout and progress on stderr.
"""
