"""Property: whatever a mutated sample repository holds, loading it gives a valid state or
problems that each name a file and line; never another exception (see tests/mutations.py)."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mutations import make_sample, mutate, verdict


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_mutated_sample_is_valid_or_rejected_at_a_line(rng: random.Random) -> None:
    """A mutated inventory or service folder loads as a safe state or is rejected with every
    problem at a file and line; the loader never raises anything else."""
    with tempfile.TemporaryDirectory(prefix="gitops-fuzz-") as tmp:
        root = make_sample(Path(tmp) / "state")
        done = mutate(root, rng)
        result, _state = verdict(root)
        assert result.kind in ("valid", "rejected"), (done, result)
