"""Checks for the base service (testinfra): admin access, sudo, SSH hardening, timezone, motd."""

from contextlib import nullcontext

SUDOERS = "/etc/sudoers.d/90-gitops-admin"


def _as_root(host):
    """Run privileged commands with sudo unless already connected as root."""
    return nullcontext() if host.user().uid == 0 else host.sudo()


def test_admin_user_has_keys(host, params):
    """The admin user exists with a login shell and every declared key, with safe permissions."""
    user = host.user(params["admin_user"])
    assert user.exists
    assert user.shell == "/bin/bash"
    ssh_dir = host.file(f"{user.home}/.ssh")
    keys = host.file(f"{user.home}/.ssh/authorized_keys")
    with _as_root(host):
        assert ssh_dir.is_directory and ssh_dir.user == user.name and ssh_dir.mode == 0o700
        assert keys.is_file and keys.user == user.name and keys.mode == 0o600
        content = keys.content_string
    for key in params["admin_keys"]:
        assert key.strip() in content


def test_admin_sudo_is_passwordless_and_valid(host, params):
    """The sudoers drop-in is root-owned, mode 0440, valid, and gives the admin NOPASSWD."""
    sudoers = host.file(SUDOERS)
    with _as_root(host):
        assert sudoers.is_file
        assert sudoers.user == "root" and sudoers.group == "root"
        assert sudoers.mode == 0o440
        assert host.run("visudo -cq").rc == 0
        listing = host.check_output(f"sudo -n -l -U {params['admin_user']}")
    assert "NOPASSWD: ALL" in listing


def test_sshd_effective_config_is_hardened(host):
    """sshd's effective configuration (sshd -T) refuses passwords and root passwords."""
    with _as_root(host):
        effective = host.check_output("sshd -T")
    lines = set(effective.lower().splitlines())
    assert "passwordauthentication no" in lines
    assert "kbdinteractiveauthentication no" in lines
    assert "permitrootlogin without-password" in lines or "permitrootlogin prohibit-password" in lines


def test_sshd_running_enabled_and_listening(host):
    """sshd runs, starts at boot and listens on port 22 (IPv4 or IPv6 wildcard)."""
    unit = host.service("ssh").systemd_properties
    assert unit["ActiveState"] == "active"
    assert unit["UnitFileState"] == "enabled"
    assert host.socket("tcp://0.0.0.0:22").is_listening or host.socket("tcp://:::22").is_listening


def test_timezone(host, params):
    """/etc/localtime points at the declared zone and /etc/timezone names it."""
    zone = params["timezone"]
    assert host.file(f"/usr/share/zoneinfo/{zone}").exists, f"tzdata lacks {zone}"
    assert host.check_output("readlink /etc/localtime") == f"/usr/share/zoneinfo/{zone}"
    assert host.file("/etc/timezone").content_string.strip() == zone


def test_motd(host, params):
    """The motd carries the declared message, the machine's host name and the environment."""
    motd = host.file("/etc/motd")
    assert motd.mode == 0o644
    content = motd.content_string
    assert params["motd"] in content
    assert host.check_output("hostname") in content
    if params.get("environment"):
        assert params["environment"] in content
