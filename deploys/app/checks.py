"""Checks for the app service (testinfra): systemd unit, loopback port, HTTP answers."""

import hashlib
import json

def http_get(host, url):
    """GET ``url`` on the host itself with curl (installed by the base service).

    Returns (status, body); status 0 and curl's error as body when there is no HTTP answer.
    """
    result = host.run("curl -sS --max-time 5 -w '\\n%%{http_code}' %s", url)
    body, _, status = result.stdout.rpartition("\n")
    if not status.isdigit() or int(status) == 0:
        return 0, result.stderr.strip() or body
    return int(status), body


def test_unit_running_and_enabled(host):
    """app.service runs and starts at boot, as the unprivileged app user."""
    unit = host.service("app").systemd_properties  # one `systemctl show` for all three
    assert unit["ActiveState"] == "active"
    assert unit["UnitFileState"] == "enabled"
    assert unit["User"] == "app"
    assert host.user("app").exists


def test_listens_on_loopback_only(host, params):
    """The app listens on 127.0.0.1:port and not on every address."""
    assert host.socket(f"tcp://127.0.0.1:{params['port']}").is_listening
    assert not host.socket(f"tcp://0.0.0.0:{params['port']}").is_listening


def test_healthz(host, params):
    """GET /healthz answers 200 ok."""
    url = f"http://127.0.0.1:{params['port']}/healthz"
    status, body = http_get(host, url)
    assert status == 200, f"GET {url}: {body}"
    assert body.strip() == "ok"


def test_root_has_message_and_host(host, params):
    """GET / answers the declared message and the machine's host name."""
    url = f"http://127.0.0.1:{params['port']}/"
    status, body = http_get(host, url)
    assert status == 200, f"GET {url}: {body}"
    data = json.loads(body)
    assert data["message"] == params["message"]
    assert data["host"] == host.check_output("hostname")


# Reads the token from the app's configuration on the host and sends it as X-Token: the
# command line carries no secret, only the path of the file that holds it.
_PRIVATE = """
import json, sys, urllib.error, urllib.request
token = json.load(open(sys.argv[1]))["token"] or ""
request = urllib.request.Request(sys.argv[2], headers={"X-Token": token} if token else {})
try:
    print(urllib.request.urlopen(request, timeout=5).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
"""


def test_token_reached_the_app(host, params):
    """The declared token is the app's (compared by digest) and GET /private needs it."""
    url = f"http://127.0.0.1:{params['port']}/private"
    status, _ = http_get(host, url)
    if not params.get("token"):
        assert status == 503, f"GET {url} without a token configured: {status}"
        return
    assert status == 401, f"GET {url} without X-Token: {status}, expected 401"
    config = json.loads(host.file("/etc/app/config.json").content_string)
    on_host = hashlib.sha256((config.get("token") or "").encode()).hexdigest()
    declared = hashlib.sha256(params["token"].encode()).hexdigest()
    assert on_host == declared, "the app's token is not the declared one"
    answer = host.check_output("python3 -c %s /etc/app/config.json %s", _PRIVATE, url)
    assert answer.strip() == "200", f"GET {url} with the declared X-Token: {answer}"
