"""Checks for the web service (testinfra): nginx up, proxying to the app, static files, config."""

import json
from pathlib import Path

SITE = "/etc/nginx/conf.d/gitops-web.conf"
SITE_FILES = Path(__file__).parent / "files" / "site"

def http_get(host, url):
    """GET ``url`` on the host itself with curl (installed by the base service).

    Returns (status, body); status 0 and curl's error as body when there is no HTTP answer.
    """
    result = host.run("curl -sS --max-time 5 -w '\\n%%{http_code}' %s", url)
    body, _, status = result.stdout.rpartition("\n")
    if not status.isdigit() or int(status) == 0:
        return 0, result.stderr.strip() or body
    return int(status), body


def test_nginx_running_and_enabled(host, params):
    """nginx runs, starts at boot and listens on its port."""
    unit = host.service("nginx").systemd_properties
    assert unit["ActiveState"] == "active"
    assert unit["UnitFileState"] == "enabled"
    port = params["listen_port"]
    assert host.socket(f"tcp://0.0.0.0:{port}").is_listening
    if params["ipv6"]:
        assert host.socket(f"tcp://:::{port}").is_listening


def test_root_is_proxied_to_the_app(host, params):
    """GET / through nginx answers 200 with the app's own answer (same message and host)."""
    url = f"http://127.0.0.1:{params['listen_port']}/"
    status, body = http_get(host, url)
    assert status == 200, f"GET {url} (nginx): {body}"
    via_nginx = json.loads(body)
    direct_status, direct = http_get(host, f"http://127.0.0.1:{params['app_port']}/")
    assert direct_status == 200, f"the app itself does not answer: {direct}"
    assert via_nginx["service"] == "app"
    assert via_nginx == json.loads(direct)


def test_static_file_served(host, params):
    """Static files from the repository are served unchanged under /static/."""
    url = f"http://127.0.0.1:{params['listen_port']}/static/index.html"
    status, body = http_get(host, url)
    assert status == 200, f"GET {url}: {body}"
    assert body.strip() == (SITE_FILES / "index.html").read_text().strip()


def test_site_config(host, params):
    """The site configuration is root-owned, mode 0644, proxies to the app port; no default site."""
    site = host.file(SITE)
    assert site.is_file
    assert site.user == "root" and site.group == "root"
    assert site.mode == 0o644
    content = site.content_string
    assert f"listen {params['listen_port']} default_server;" in content
    assert f"server 127.0.0.1:{params['app_port']};" in content
    assert not host.file("/etc/nginx/sites-enabled/default").exists
