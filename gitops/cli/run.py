"""``gitops run``: the daemon, with its HTTP server (webhooks, operator API, status page,
metrics), until SIGTERM or Ctrl-C."""

from __future__ import annotations

import time

import click

from gitops.cli.context import load_settings
from gitops.cli.options import EXIT_CODES, config_option
from gitops.cli.output import fail
from gitops.errors import GitopsError
from gitops.record.store import Database

__all__ = ["run"]


@click.command(epilog=EXIT_CODES)
@config_option
def run() -> None:
    """Run the daemon: watch the configured environments and reconcile them continuously.

    Serves webhooks, the operator API, the status page and /healthz on the listen address.
    SIGTERM or Ctrl-C: the batch in progress finishes, the run is recorded as interrupted,
    then exit.
    """
    import logging
    import signal

    from gitops.daemon.loop import Daemon
    from gitops.web import metrics, page, server
    from gitops.web.access import Gate
    from gitops.web.limits import HttpLimits
    from gitops.web.sessions import Sessions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    s = load_settings()
    try:
        daemon = Daemon(s)
        gate = Gate(s, Database.of(s), sessions=Sessions(s.session_hours * 3600))
        authorize = gate.rule("read")
        app = server.create_app(daemon, s, extra_routes=[
            *metrics.routes(s.state_dir, authorize, Database.of(s)),
            *page.routes(s.state_dir, authorize, Database.of(s), chain=daemon.chain,
                         sessions=gate.sessions, oidc=s.oidc, teams=s.teams)],
            previews=daemon.previews, gate=gate)
        http, thread = server.start_in_thread(
            app, s.listen, limits=HttpLimits(per_client=s.max_client_requests))
    except GitopsError as exc:
        fail(exc, False)
    stopping: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stopping.append(signum)  # only a flag: locks are not safe in a signal handler

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.start()
    click.echo(f"gitops daemon: watching {', '.join(e.name for e in s.environments)}; "
               f"{'https' if s.tls_cert else 'http'}://{s.listen}/healthz", err=True)
    while not stopping:
        time.sleep(0.2)
    click.echo("gitops daemon: stopping (the batch in progress finishes)", err=True)
    daemon.stop()
    server.stop(http, thread)
