"""The benchmarks the docs quote run, each in its quickest form, so they do not rot.

Each runs as docs/develop/benchmarks.md says (``python bench/NAME.py``, this interpreter),
with one round at its smallest size, and must exit 0, print its summary and leave
``bench/RESULTS*.md`` as they were. Those on lab hosts are marked ``lab`` and use labs named
after the session's lab. The module takes about 8 minutes on the 2-core machine (the
daemon's 2 min and its 20-host lab, the faults' 1.5 min with one fault of each kind). Not run
here: ``verify_vs_floor.py`` (20 converged hosts, 2 min) and ``controllers.py`` (PostgreSQL,
minutes of kills).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import in_ci
from statelab import side_lab

import gitops.lab as lab_api

ROOT = Path(__file__).resolve().parent.parent


def _results() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((ROOT / "bench").glob("RESULTS*.md"))}


def run_bench(script: str, *args: str, timeout: float = 900) -> str:
    """Run ``bench/<script>`` with ``args``; its stdout, after checking it exited 0 and left
    the results files alone."""
    before = _results()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n" + (
        proc.stdout[-3000:] + proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert _results() == before, f"{script} changed bench/RESULTS*.md"
    return proc.stdout


@pytest.mark.parametrize(("script", "args", "summary"), [
    ("api_metrics.py", ["--runs", "20", "--hosts", "2", "--requests", "2", "--no-results"],
     "**api_metrics**"),
    ("delivery_metrics.py", ["--runs", "20", "--hosts", "2", "--rounds", "1"],
     "**delivery_metrics**"),
    ("fuzz.py", ["--count", "10", "--cli", "1"], "One validate of the unmutated sample"),
    ("sops_load.py", ["--rounds", "1", "--no-results"], "**sops_load**"),
    ("cli_start.py", ["--runs", "1", "--no-results"], "Identical output on both sides"),
    ("warm_workers.py", ["--runs", "1", "--rounds", "1", "--no-results"], "**warm_workers**"),
])
def test_a_benchmark_without_hosts_runs(script: str, args: list[str], summary: str) -> None:
    """A benchmark that needs no lab runs to its summary line."""
    assert summary in run_bench(script, *args)


def test_the_page_load_benchmark_runs() -> None:
    """bench/page_load.py loads the page in headless chromium and prints its summary."""
    if not Path("/usr/bin/chromium").exists():
        reason = "/usr/bin/chromium is missing (apt-get install -y chromium)"
        if in_ci():
            pytest.fail(f"browser benchmark cannot run under CI: {reason}", pytrace=False)
        pytest.skip(reason)
    out = run_bench("page_load.py", "--runs", "20", "--hosts", "2", "--requests", "1",
                    "--loads", "1", "--no-results")
    assert "**page_load**" in out


@pytest.mark.lab
@pytest.mark.parametrize(("script", "tag", "summary"), [
    ("reconcile_vs_ansible.py", "bra", "**reconcile_vs_ansible**"),
    ("apply_vs_pyinfra.py", "bap", "Ratio"),
    ("guard.py", "bgd", "Ratio"),
])
def test_a_benchmark_on_lab_hosts_runs(script: str, tag: str, summary: str) -> None:
    """A benchmark on lab hosts runs one round to its summary, and takes its lab down."""
    name = side_lab(tag)
    out = run_bench(script, "--name", name, "--rounds", "1")
    assert summary in out
    assert lab_api.current(name) is None


@pytest.mark.lab
@pytest.mark.parametrize(("script", "args", "summary"), [
    ("commands.py", ["--name", "{bcm}", "--hosts", "1"], "Processes started on lab-1"),
    ("promotion.py", ["--name", "{bpr}", "--commits", "1", "--interval", "2"],
     "Promotion wait"),
    ("preview.py", ["--runs", "1"], "| 1 | success |"),  # its labs: the session's name + "b"
    ("lab_boot.py", ["--name", "{blb}", "--runs", "1"], "`lab down` of 20 hosts"),
    ("scale.py", ["--name", "{bsc}", "--sizes", "2", "--rounds", "1", "--fanout", "0"],
     "| 2 | "),
    ("soak.py", ["--name", "{bsk}", "--hosts", "1", "--minutes", "0.3", "--commit-every", "5",
                 "--sample", "5", "--warmup", "1", "--out", "{tmp}/soak.md"], "**soak**"),
    ("daemon.py", ["--idle", "2", "--idle-nowatch", "2", "--cycles", "2", "--rounds", "1",
                   "--big-hosts", "3", "--commits", "1", "--hooks", "2", "--no-results"],
     "**daemon**"),
    ("faults.py", ["--name", "{bfa}", "--kills", "1", "--net", "1", "--power", "1", "--disk",
                   "1", "--remote", "1", "--second", "1"], "6 survived without loss, 0 losses"),
])
def test_a_daemon_or_command_benchmark_runs(script: str, args: list[str], summary: str,
                                            tmp_path: Path) -> None:
    """A benchmark of the daemon or of the commands runs once to its summary (the soak for
    18 s)."""
    names = {tag: side_lab(tag) for tag in ("bcm", "bpr", "blb", "bsc", "bsk", "bfa")}
    out = run_bench(script, *(a.format(tmp=tmp_path, **names) for a in args))
    assert summary in out
