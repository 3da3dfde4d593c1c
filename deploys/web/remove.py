"""Takes web off a host (gitops runs it when the revision no longer declares web there).

Removes what ``deploy.py`` put in place: the nginx site and the static files; then nginx,
left without a site, is stopped and disabled. The nginx package stays installed (other
software may use it; a later apply of web finds it in place). ``host.data`` holds the
parameters web was last applied with on this host, from gitops' record.
"""

from pyinfra.operations import files, systemd

SITE = "/etc/nginx/conf.d/gitops-web.conf"
STATIC_ROOT = "/var/www/gitops-web"

files.file(name="Remove the nginx site", path=SITE, present=False)
files.directory(name="Remove the static site files", path=STATIC_ROOT, present=False)
systemd.service(name="nginx stopped and disabled", service="nginx", running=False,
                enabled=False)
