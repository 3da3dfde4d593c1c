"""What many clients can make the daemon do: the page's answer built once per record change,
its long texts cut, one client's requests limited, ``/healthz`` answered while page builds
fill the thread pool. A real store, real uvicorn on loopback; clients are told apart by
their source address (127.0.0.x), as the server sees distinct hosts."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from polling import wait_for
from starlette.applications import Starlette
from test_page import ENV, record_run, revision
from test_server import RecordingController, environments

from gitops.daemon import control
from gitops.record.store import Store
from gitops.settings import Settings
from gitops.web import page
from gitops.web.limits import HttpLimits
from gitops.web.page_answer import TEXT_LIMIT, PageAnswers
from gitops.web.server import bound_port, create_app, start_in_thread, stop


class GatedAnswers(PageAnswers):
    """``PageAnswers`` whose builds wait for ``gate``; ``arrived`` counts the requests that
    reached it (each one holds a thread of the pool until answered)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.arrived = 0
        self._count = threading.Lock()

    def get(self, mark: Hashable, build: Callable[[], Any]) -> bytes:
        with self._count:
            self.arrived += 1

        def gated() -> Any:
            self.gate.wait(60)
            return build()

        return super().get(mark, gated)


def client(url: str, source: str = "127.0.0.1") -> httpx.Client:
    """A client whose connections come from ``source`` (any 127.0.0.x is loopback)."""
    return httpx.Client(base_url=url, timeout=60,
                        transport=httpx.HTTPTransport(local_address=source))


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state_dir = tmp_path / "state"
    with Store(state_dir) as store:
        for n in range(1, 4):
            record_run(store, revision(n))
    return state_dir


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    started: list[tuple[Any, Any]] = []

    def _serve(app: Starlette, limits: HttpLimits = HttpLimits()) -> str:
        server, thread = start_in_thread(app, "127.0.0.1:0", limits=limits)
        started.append((server, thread))
        return f"http://127.0.0.1:{bound_port(server)}"

    yield _serve
    for server, thread in started:
        stop(server, thread)


def test_concurrent_viewers_cost_one_build_until_a_run(state: Path, serve: Any) -> None:
    """Twelve clients asking for the page at once while it is being built get the same
    answer from one build; a new run makes the next request build it again."""
    answers = GatedAnswers()
    url = serve(Starlette(routes=page.routes(state, None, answers=answers)))
    sources = [f"127.0.0.{n}" for n in range(2, 14)]
    with ThreadPoolExecutor(len(sources)) as pool:
        try:
            futures = [pool.submit(lambda s: client(url, s).get("/api/page"), s)
                       for s in sources]
            wait_for(lambda: answers.arrived == len(sources), 30, "every request in the server")
        finally:
            answers.gate.set()
        bodies = [f.result() for f in futures]
    assert [b.status_code for b in bodies] == [200] * len(sources)
    assert len({b.content for b in bodies}) == 1
    assert answers.builds == 1
    assert client(url).get("/api/page").content == bodies[0].content
    assert answers.builds == 1

    with Store(state) as store:
        newest = record_run(store, revision(4))
    again = client(url).get("/api/page").json()
    assert answers.builds == 2
    assert again["environments"][0]["history"][0]["id"] == newest


def test_a_suspension_changes_the_kept_answer(state: Path, serve: Any) -> None:
    """Suspending the environment (no run) is seen by the next request: the kept answer
    follows every change the page shows, not only runs."""
    answers = PageAnswers()
    url = serve(Starlette(routes=page.routes(state, None, answers=answers)))
    before = client(url).get("/api/page").json()["environments"][0]
    assert not before["suspended"]
    with Store(state) as store:
        control.suspend(store, ENV, reason="maintenance", actor="ops")
    after = client(url).get("/api/page").json()["environments"][0]
    assert after["suspended"] and after["suspended_reason"] == "maintenance"


def test_long_stored_text_is_cut_in_the_answer(state: Path, serve: Any) -> None:
    """A reason of 1 MiB in the record reaches the page answer cut to ``TEXT_LIMIT``
    characters with a marker saying how much was left out."""
    huge = "r" * 1_048_576
    with Store(state) as store:  # as an older version, without bounds at the edge, kept it
        store.set_controls(ENV, suspended=1, reason=huge, actor="ops", since=store.clock())
    url = serve(Starlette(routes=page.routes(state, None)))
    answer = client(url).get("/api/page")
    env = answer.json()["environments"][0]
    assert env["suspended_reason"] == "r" * TEXT_LIMIT + \
        f"… [{len(huge) - TEXT_LIMIT} more characters]"
    assert len(answer.content) < 200_000


def test_a_client_over_its_limit_gets_429_while_another_is_served(state: Path,
                                                                 serve: Any) -> None:
    """With two page requests of one address in flight, its third gets 429 with Retry-After;
    a request from another address is answered 200 meanwhile."""
    answers = GatedAnswers()
    url = serve(Starlette(routes=page.routes(state, None, answers=answers)),
                HttpLimits(per_client=2))
    with ThreadPoolExecutor(2) as pool:
        try:
            busy = [pool.submit(lambda: client(url).get("/api/page")) for _ in range(2)]
            wait_for(lambda: answers.arrived == 2, 30, "two requests in the server")
            refused = client(url).get("/")
            other = client(url, "127.0.0.2").get("/")
        finally:
            answers.gate.set()
        assert [f.result().status_code for f in busy] == [200, 200]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert "retry later" in refused.json()["error"]
    assert other.status_code == 200
    assert client(url).get("/").status_code == 200  # its requests done: served again


def test_healthz_answers_while_page_builds_fill_the_thread_pool(
        state: Path, serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With every thread of the request pool (40) held by a page build that waits, /healthz
    still answers 200: it does not queue behind them."""
    monkeypatch.setenv("GITOPS_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("TEST_GITOPS_HOOK_SECRET", "hook-secret")
    answers = GatedAnswers()
    app = create_app(RecordingController(environments()), Settings(environments=[]),
                     extra_routes=page.routes(state, None, answers=answers))
    url = serve(app)
    sources = [f"127.0.0.{n}" for n in range(2, 52)]  # 50 clients, one request each
    with ThreadPoolExecutor(len(sources)) as pool:
        try:
            futures = [pool.submit(lambda s: client(url, s).get("/api/page"), s)
                       for s in sources]
            wait_for(lambda: answers.arrived >= 40, 30, "the thread pool full of page builds")
            health = client(url).get("/healthz")
            waiting = len(sources) - answers.arrived
        finally:
            answers.gate.set()
        assert {f.result().status_code for f in futures} == {200}
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert waiting > 0  # some page requests were still waiting for a thread


@pytest.mark.parametrize("sent", [b"", b"GET /api/page HTTP/1.1\r\nHost: x\r\n"])
def test_a_connection_that_never_finishes_its_request_head_is_closed(
        state: Path, serve: Any, sent: bytes) -> None:
    """A client that connects and sends nothing, or only part of its headers, is
    disconnected after ``request_head`` seconds instead of holding the connection."""
    import socket

    url = serve(Starlette(routes=page.routes(state, None)), HttpLimits(request_head=0.5))
    port = int(url.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(sent)
        assert sock.recv(1024) == b""  # closed by the server (a timeout error otherwise)
    assert client(url).get("/api/page").status_code == 200
