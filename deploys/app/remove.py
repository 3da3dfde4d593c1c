"""Takes app off a host (gitops runs it when the revision no longer declares app there).

Stops and disables the service, then removes its unit, code, configuration and system user:
what ``deploy.py`` put in place. ``host.data`` holds the parameters app was last applied
with on this host, from gitops' record (a secret such as the token reads ``<secret>``).
"""

from pyinfra.operations import files, server, systemd

USER = "app"
UNIT = "/etc/systemd/system/app.service"

systemd.service(name="app stopped and disabled", service="app", running=False, enabled=False)
unit = files.file(name="Remove the systemd unit app.service", path=UNIT, present=False)
systemd.daemon_reload(name="systemd daemon-reload (unit removed)", _if=unit.did_change)
files.directory(name="Remove the code directory /opt/app", path="/opt/app", present=False)
files.directory(name="Remove the config directory /etc/app", path="/etc/app", present=False)
server.user(name=f"Remove the system user {USER}", user=USER, present=False)
