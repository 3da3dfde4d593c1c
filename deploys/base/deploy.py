"""base: the admin user with SSH keys and sudo, SSH hardening, timezone and motd.

A plain pyinfra deploy file: parameters come from host data (``host.data.admin_user``, ...),
whether the data was given by the gitops reconciler or by a pyinfra inventory.
"""

from hashlib import sha1
from io import StringIO
from pathlib import Path
from shlex import quote

from jinja2 import StrictUndefined, Template
from pyinfra import host
from pyinfra.facts.files import Sha1File
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import Hostname
from pyinfra.operations import apt, files, server, systemd

HERE = Path(__file__).parent
SUDOERS = "/etc/sudoers.d/90-gitops-admin"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/50-gitops-hardening.conf"

admin_user = host.data.get("admin_user", "ops")
admin_keys = host.data.get("admin_keys") or []
timezone = host.data.get("timezone", "UTC")
motd = host.data.get("motd", "Managed by gitops: local changes will be overwritten.")
environment = host.data.get("environment", "")


def render(name: str, **context) -> str:
    return Template((HERE / "templates" / name).read_text(), undefined=StrictUndefined,
                    keep_trailing_newline=True).render(**context)


def install_validated(name, content, dest, mode, check_staged=None, check_installed=None):
    """Install ``content`` at ``dest`` only when it differs, validated, rolled back on failure.

    ``check_staged`` runs on the staged copy (``{path}`` is replaced), ``check_installed``
    after it is in place (e.g. ``sshd -t`` reads the whole configuration); if either fails
    the previous file is restored and the operation fails. Returns whether it will change.
    """
    if host.get_fact(Sha1File, path=dest) == sha1(content.encode()).hexdigest():
        return False
    stage, backup = f"{dest}.gitops-new", f"{dest}.gitops-bak"
    files.put(name=f"{name}: stage", src=StringIO(content), dest=stage,
              user="root", group="root", mode=mode)
    pre = check_staged.format(path=quote(stage)) if check_staged else "true"
    post = check_installed or "true"
    d, s, b = quote(dest), quote(stage), quote(backup)
    server.shell(
        name=f"{name}: validate and install",
        commands=[
            f"if ! {pre}; then rm -f {s}; echo 'gitops: {dest} rejected by validation' >&2; exit 1; fi; "
            f"if [ -e {d} ]; then cp -p {d} {b}; else rm -f {b}; fi; mv -f {s} {d}; "
            f"if ! {post}; then if [ -e {b} ]; then mv -f {b} {d}; else rm -f {d}; fi; "
            f"echo 'gitops: {dest} rejected by validation, previous state restored' >&2; exit 1; fi; "
            f"rm -f {b}",
        ],
    )
    return True


# --- packages -----------------------------------------------------------------------------------

PACKAGES = ["tzdata", "sudo", "openssh-server", "curl"]
installed = host.get_fact(DebPackages)
apt.packages(
    name="Install base packages (tzdata, sudo, openssh-server, curl)",
    packages=PACKAGES,
    # the package lists are refreshed only to install: a run that has nothing to install
    # reads no clock (pyinfra's cache_time reads the host's date, which changes every run)
    update=any(p not in installed for p in PACKAGES),
    cache_time=3600,
)

# --- admin user, keys, sudo ---------------------------------------------------------------------

server.user(
    name=f"Admin user {admin_user} with its SSH keys",
    user=admin_user,
    home=f"/home/{admin_user}",
    shell="/bin/bash",
    create_home=True,
    public_keys=list(admin_keys),
    delete_keys=True,
)

install_validated(
    "Passwordless sudo for the admin user",
    render("sudoers.j2", admin_user=admin_user),
    SUDOERS,
    mode="440",
    check_staged="visudo -cqf {path}",
)
files.file(
    name="sudoers drop-in owned by root, mode 0440",
    path=SUDOERS, user="root", group="root", mode="440",
)

# --- SSH hardening ------------------------------------------------------------------------------

sshd_changed = install_validated(
    "SSH hardening drop-in",
    (HERE / "files" / "sshd-hardening.conf").read_text(),
    SSHD_DROPIN,
    mode="644",
    check_installed="sshd -t",
)
systemd.service(
    name="sshd running and enabled",
    service="ssh", running=True, enabled=True,
)
if sshd_changed:
    systemd.service(
        name="Reload sshd (configuration changed)",
        service="ssh", running=True, reloaded=True,
    )

# --- timezone -----------------------------------------------------------------------------------

files.link(
    name=f"Timezone {timezone}: /etc/localtime",
    path="/etc/localtime",
    target=f"/usr/share/zoneinfo/{timezone}",
)
files.put(
    name=f"Timezone {timezone}: /etc/timezone",
    src=StringIO(f"{timezone}\n"),
    dest="/etc/timezone",
    user="root", group="root", mode="644",
)

# --- motd ---------------------------------------------------------------------------------------

files.put(
    name="Message of the day",
    src=StringIO(render(
        "motd.j2",
        motd=motd,
        hostname=host.get_fact(Hostname),
        inventory_name=host.name,
        environment=environment,
    )),
    dest="/etc/motd",
    user="root", group="root", mode="644",
)
