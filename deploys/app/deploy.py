"""app: a small stdlib HTTP service run by systemd under its own system user.

A plain pyinfra deploy file: ``host.data.port``, ``host.data.message`` and ``host.data.token``
come from the gitops reconciler's validated parameters or from any pyinfra inventory.
"""

import json
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.operations import files, server, systemd
from pyinfra.operations.util import any_changed

HERE = Path(__file__).parent
USER = "app"
CODE = "/opt/app/app.py"
CONFIG = "/etc/app/config.json"
UNIT = "/etc/systemd/system/app.service"

port = int(host.data.get("port", 8000))
message = host.data.get("message", "Hello from gitops")
token = host.data.get("token")  # the plain value: gitops decrypts it and keeps it out of output

server.user(
    name=f"System user {USER}",
    user=USER,
    system=True,
    home="/nonexistent",
    shell="/usr/sbin/nologin",
    create_home=False,
)
files.directory(name="Code directory /opt/app", path="/opt/app",
                user="root", group="root", mode="755")
files.directory(name="Config directory /etc/app", path="/etc/app",
                user="root", group=USER, mode="750")

code = files.put(
    name="App code",
    src=str(HERE / "files" / "app.py"),
    dest=CODE,
    user="root", group="root", mode="755",
)
config = files.put(
    name="App configuration",
    src=StringIO(json.dumps({"port": port, "message": message, "token": token},
                            indent=2, sort_keys=True) + "\n"),
    dest=CONFIG,
    user="root", group=USER, mode="640",
)
unit = files.template(
    name="systemd unit app.service",
    src=str(HERE / "templates" / "app.service.j2"),
    dest=UNIT,
    user="root", group="root", mode="644",
    port=port, service_user=USER, code=CODE, config=CONFIG,
)

systemd.daemon_reload(name="systemd daemon-reload (unit changed)", _if=unit.did_change)
systemd.service(name="app running and enabled", service="app", running=True, enabled=True)
systemd.service(
    name="Restart app (code, configuration or unit changed)",
    service="app",
    running=True,
    restarted=True,
    _if=any_changed(code, config, unit),
)
