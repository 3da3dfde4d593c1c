"""web: nginx serving the repository's static files and proxying / to the app.

A plain pyinfra deploy file: ``host.data.listen_port``, ``server_name`` and ``app_port`` come
from the gitops reconciler's validated parameters or from any pyinfra inventory.
"""

from hashlib import sha1
from io import StringIO
from pathlib import Path
from shlex import quote

from jinja2 import StrictUndefined, Template
from pyinfra import host
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.files import Link, Sha1File
from pyinfra.operations import apt, files, server, systemd

HERE = Path(__file__).parent
SITE = "/etc/nginx/conf.d/gitops-web.conf"
DEFAULT_SITE = "/etc/nginx/sites-enabled/default"
STATIC_ROOT = "/var/www/gitops-web"

site = Template((HERE / "templates" / "site.conf.j2").read_text(), undefined=StrictUndefined,
                keep_trailing_newline=True, trim_blocks=True).render(
    listen_port=int(host.data.get("listen_port", 80)),
    ipv6=bool(host.data.get("ipv6", True)),
    server_name=host.data.get("server_name", "_"),
    app_port=int(host.data.get("app_port", 8000)),
    static_root=STATIC_ROOT,
)


def install_validated(name, content, dest, mode, check_installed):
    """Install ``content`` at ``dest`` only when it differs; ``check_installed`` runs once it is
    in place and on failure the previous file is restored and the operation fails.
    Returns whether it will change."""
    if host.get_fact(Sha1File, path=dest) == sha1(content.encode()).hexdigest():
        return False
    stage, backup = f"{dest}.gitops-new", f"{dest}.gitops-bak"
    files.put(name=f"{name}: stage", src=StringIO(content), dest=stage,
              user="root", group="root", mode=mode)
    d, s, b = quote(dest), quote(stage), quote(backup)
    server.shell(
        name=f"{name}: validate and install",
        commands=[
            f"if [ -e {d} ]; then cp -p {d} {b}; else rm -f {b}; fi; mv -f {s} {d}; "
            f"if ! {check_installed}; then if [ -e {b} ]; then mv -f {b} {d}; else rm -f {d}; fi; "
            f"echo 'gitops: {dest} rejected by validation, previous state restored' >&2; exit 1; fi; "
            f"rm -f {b}",
        ],
    )
    return True


apt.packages(name="Install nginx", packages=["nginx"],
             update="nginx" not in host.get_fact(DebPackages), cache_time=3600)

files.sync(
    name="Static site files",
    src=str(HERE / "files" / "site"),
    dest=STATIC_ROOT,
    user="root", group="root", mode="644", dir_mode="755",
    delete=True,
)

default_enabled = host.get_fact(Link, path=DEFAULT_SITE) is not None
files.link(name="Remove nginx's default site", path=DEFAULT_SITE, present=False)

site_changed = install_validated("nginx site", site, SITE, mode="644", check_installed="nginx -t")
files.file(name="nginx site owned by root, mode 0644", path=SITE,
           user="root", group="root", mode="644")

systemd.service(name="nginx running and enabled", service="nginx", running=True, enabled=True)
if site_changed or default_enabled:
    server.shell(name="Validate nginx configuration", commands=["nginx -t"])
    systemd.service(
        name="Reload nginx (configuration changed)",
        service="nginx", running=True, reloaded=True,
    )
