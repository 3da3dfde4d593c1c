"""gitops.pipeline.vagrant: the inventory of a Vagrant environment, and the repository's
Vagrantfile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import vagrantboot
import yaml
from builders import commit, copy_sample, git_repo
from conftest import in_ci
from vagrantboot import MACHINE, cli

from gitops.lab import vagrantbox
from gitops.model import InventoryFile
from gitops.pipeline.vagrant import (
    VagrantError,
    VagrantHost,
    VagrantHostsMissing,
    VagrantNotInstalled,
    missing_hosts,
    parse_ssh_config,
    parse_status,
    read_hosts,
)

REPO = Path(__file__).resolve().parent.parent

# `vagrant ssh-config` for a multi-machine Vagrantfile, in the format of Vagrant's
# templates/commands/ssh_config/config.erb (two-space indent, blank line between machines,
# key paths with spaces double-quoted, several IdentityFile lines when several keys are set).
SSH_CONFIG = """\
Host web1
  HostName 192.168.121.11
  User vagrant
  Port 22
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /home/dev/repo/.vagrant/machines/web1/libvirt/private_key
  IdentitiesOnly yes
  LogLevel FATAL
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa

Host app1
  HostName 127.0.0.1
  User vagrant
  Port 2201
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile "/home/dev/my repo/.vagrant/machines/app1/virtualbox/private_key"
  IdentityFile /home/dev/.vagrant.d/insecure_private_key
  IdentitiesOnly yes
  LogLevel FATAL

"""

# `vagrant status --machine-readable` with web2 halted.
STATUS = """\
1700000000,web1,metadata,provider,libvirt
1700000000,web1,provider-name,libvirt
1700000000,web1,state,running
1700000000,web1,state-human-short,running
1700000000,web2,metadata,provider,libvirt
1700000000,web2,state,shutoff
1700000000,app1,metadata,provider,virtualbox
1700000000,app1,state,running
1700000000,,ui,info,Current machine states:
"""

NOT_READY = (
    "The provider for this Vagrant-managed machine is reporting that it\n"
    "is not yet ready for SSH. Depending on your provider this can carry\n"
    "different meanings. Make sure your machine is created and running and\n"
    "try again.\n"
)


def test_parse_ssh_config_several_machines() -> None:
    """Every Host block becomes a VagrantHost with its name, address, port, user and key."""
    hosts = parse_ssh_config(SSH_CONFIG)
    assert hosts == {
        "web1": VagrantHost(
            name="web1",
            address="192.168.121.11",
            port=22,
            user="vagrant",
            key_file="/home/dev/repo/.vagrant/machines/web1/libvirt/private_key",
        ),
        "app1": VagrantHost(
            name="app1",
            address="127.0.0.1",
            port=2201,
            user="vagrant",
            key_file="/home/dev/my repo/.vagrant/machines/app1/virtualbox/private_key",
        ),
    }


def test_parse_ssh_config_ignores_noise_and_accepts_equals_syntax() -> None:
    """Notices before the first Host, comments, Key=value and any keyword case are handled."""
    text = (
        "==> vagrant: A new version of Vagrant is available!\n"
        "Host web2\n"
        "  # comment\n"
        "  hostname=10.0.0.5\n"
        "  PORT 2222\n"
        "  user deploy\n"
    )
    assert parse_ssh_config(text) == {
        "web2": VagrantHost(name="web2", address="10.0.0.5", port=2222, user="deploy",
                            key_file=None)
    }


def test_parse_ssh_config_openssh_defaults() -> None:
    """A block without HostName/Port/User falls back to the alias, port 22 and 'vagrant'."""
    assert parse_ssh_config("Host app1\n") == {
        "app1": VagrantHost(name="app1", address="app1", port=22, user="vagrant", key_file=None)
    }


def test_parse_ssh_config_empty_output() -> None:
    """No Host blocks (nothing running, or only an error on stderr) gives no hosts."""
    assert parse_ssh_config("") == {}
    assert parse_ssh_config(NOT_READY) == {}


def test_parse_ssh_config_bad_port_is_an_error() -> None:
    """A Port that is not a number in range is reported with the machine's name."""
    with pytest.raises(VagrantError, match="web1: Port"):
        parse_ssh_config("Host web1\n  Port ssh\n")
    with pytest.raises(VagrantError, match="web1: Port out of range"):
        parse_ssh_config("Host web1\n  Port 70000\n")


def test_parse_status_machine_readable() -> None:
    """`vagrant status --machine-readable` gives each machine's state."""
    assert parse_status(STATUS) == {"web1": "running", "web2": "shutoff", "app1": "running"}


def test_missing_hosts_names_the_state() -> None:
    """A declared host without ssh-config is reported with its Vagrant state or as undefined."""
    found = parse_ssh_config(SSH_CONFIG)
    states = parse_status(STATUS)
    assert missing_hosts(["web1", "web2", "app1", "db1"], found, states) == {
        "web2": "shutoff",
        "db1": "not defined in the Vagrantfile",
    }
    assert missing_hosts(["web1"], found) == {}


def _fake_vagrant(tmp_path: Path, ssh_config_rc: int = 0) -> Path:
    """A `vagrant` stand-in printing STATUS and SSH_CONFIG, logging its arguments."""
    (tmp_path / "status.txt").write_text(STATUS)
    (tmp_path / "ssh_config.txt").write_text(SSH_CONFIG)
    script = tmp_path / "vagrant"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        f"d = {str(tmp_path)!r}\n"
        "open(os.path.join(d, 'calls.log'), 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "if sys.argv[1] == 'status':\n"
        "    sys.stdout.write(open(os.path.join(d, 'status.txt')).read())\n"
        "elif sys.argv[1] == 'ssh-config':\n"
        "    sys.stdout.write(open(os.path.join(d, 'ssh_config.txt')).read())\n"
        f"    sys.stderr.write({NOT_READY!r})\n"
        f"    sys.exit({ssh_config_rc})\n"
    )
    script.chmod(0o755)
    (tmp_path / "Vagrantfile").write_text("Vagrant.configure('2') {}\n")
    return script


def test_read_hosts_asks_only_running_machines(tmp_path: Path) -> None:
    """read_hosts runs `vagrant ssh-config` for the running machines only, in the given dir."""
    fake = _fake_vagrant(tmp_path)
    hosts = read_hosts(tmp_path, timeout=30, vagrant=str(fake))
    assert set(hosts) == {"web1", "app1"}
    assert hosts["app1"].port == 2201
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls == ["status --machine-readable", "ssh-config app1 web1"]


def test_read_hosts_partial_output_with_nonzero_exit(tmp_path: Path) -> None:
    """A non-zero ssh-config exit still yields the blocks it printed."""
    fake = _fake_vagrant(tmp_path, ssh_config_rc=1)
    assert set(read_hosts(tmp_path, vagrant=str(fake))) == {"web1", "app1"}


def test_read_hosts_reports_declared_hosts_not_running(tmp_path: Path) -> None:
    """With expected names, a declared machine that is not running is named in the error."""
    fake = _fake_vagrant(tmp_path)
    with pytest.raises(VagrantHostsMissing, match=r"web2 \(shutoff\)") as info:
        read_hosts(tmp_path, vagrant=str(fake), expected=["web1", "web2", "app1"])
    assert info.value.missing == {"web2": "shutoff"}
    assert "vagrant up" in str(info.value)


def test_read_hosts_without_vagrant(tmp_path: Path) -> None:
    """A missing vagrant executable raises VagrantNotInstalled with a clear message."""
    (tmp_path / "Vagrantfile").write_text("\n")
    with pytest.raises(VagrantNotInstalled, match="not installed"):
        read_hosts(tmp_path, vagrant=str(tmp_path / "no-such-vagrant"))


def test_read_hosts_failing_vagrant(tmp_path: Path) -> None:
    """A failing `vagrant status` raises VagrantError with vagrant's message."""
    script = tmp_path / "vagrant"
    script.write_text("#!/bin/sh\necho 'There was an error loading a Vagrantfile.' >&2\nexit 1\n")
    script.chmod(0o755)
    (tmp_path / "Vagrantfile").write_text("broken\n")
    with pytest.raises(VagrantError, match="error loading a Vagrantfile"):
        read_hosts(tmp_path, vagrant=str(script))


def test_read_hosts_timeout(tmp_path: Path) -> None:
    """A vagrant that hangs is stopped after the timeout with a VagrantError."""
    script = tmp_path / "vagrant"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    (tmp_path / "Vagrantfile").write_text("\n")
    with pytest.raises(VagrantError, match="did not finish"):
        read_hosts(tmp_path, timeout=0.5, vagrant=str(script))


def test_vagrantfile_machines_match_vagrant_inventory() -> None:
    """The Vagrantfile defines exactly the hosts of inventories/vagrant.yml, with no address."""
    inventory = InventoryFile.model_validate(
        yaml.safe_load((REPO / "inventories" / "vagrant.yml").read_text())
    )
    assert inventory.settings.source == "vagrant"
    assert all(h.address is None for h in inventory.hosts.values())
    vagrantfile = (REPO / "Vagrantfile").read_text()
    for name in inventory.hosts:
        assert f'"{name}" =>' in vagrantfile


def _vagrant_or_skip() -> str:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but `vagrant` is not installed (apt-get install vagrant)")
        pytest.skip("`vagrant` is not installed (Debian: apt-get install vagrant)")
    return vagrant


def test_vagrant_validate(tmp_path: Path) -> None:
    """`vagrant validate` accepts the repository's Vagrantfile."""
    vagrant = _vagrant_or_skip()
    result = subprocess.run(
        [vagrant, "validate"],
        cwd=REPO,
        env=dict(os.environ, VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_CWD=str(REPO),
                 VAGRANT_DOTFILE_PATH=str(tmp_path / ".vagrant")),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_read_hosts_libvirt_not_running(tmp_path: Path) -> None:
    """vagrant-libvirt failing to reach libvirtd is one line saying to start libvirt."""
    script = tmp_path / "vagrant"
    script.write_text(
        "#!/bin/sh\necho 'Error while connecting to Libvirt: Error making a connection to "
        "libvirt URI qemu:///system:' >&2\necho \"Call to virConnectOpen failed: Failed to "
        "connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory\" >&2\n"
        "exit 1\n")
    script.chmod(0o755)
    (tmp_path / "Vagrantfile").write_text("\n")
    with pytest.raises(VagrantError) as info:
        read_hosts(tmp_path, vagrant=str(script))
    message = str(info.value)
    assert "libvirt is not running" in message and "gitops vagrant up" in message
    assert "\n" not in message


@pytest.mark.parametrize(("sectors", "start", "count"), [
    (8 << 21, 2048, (8 << 21) - 2048),   # the box's 8 GiB disk
    (4096, 2048, 2048),                  # the smallest disk with a 1 MiB partition
])
def test_mbr_one_bootable_linux_partition(sectors: int, start: int, count: int) -> None:
    """The partition table: one bootable Linux (0x83) partition from 1 MiB to the end of the
    disk, the disk id, the 0x55AA signature: 72 bytes written from offset 440."""
    table = vagrantbox.mbr(sectors, 0x12345678)
    assert len(table) == 512 - 440
    assert table[:4] == (0x12345678).to_bytes(4, "little")
    entry = table[6:22]
    assert entry[0] == 0x80 and entry[4] == 0x83
    assert int.from_bytes(entry[8:12], "little") == start
    assert int.from_bytes(entry[12:16], "little") == count
    assert table[22:70] == bytes(48) and table[-2:] == b"\x55\xaa"


def test_the_box_key_is_vagrants_insecure_key() -> None:
    """The box's authorized key is the one Vagrant logs in with first (its keys/vagrant.pub)."""
    assert vagrantbox.INSECURE_PUBLIC_KEY.startswith("ssh-rsa ")
    shipped = sorted(Path("/usr/share/rubygems-integration/all/gems").glob(
        "vagrant-*/keys/vagrant.pub")) + sorted(Path("/opt/vagrant/embedded/gems").glob(
        "gems/vagrant-*/keys/vagrant.pub"))
    for pub in shipped:
        assert pub.read_text().split()[:2] == vagrantbox.INSECURE_PUBLIC_KEY.split()[:2]


def test_the_box_vagrantfile_emulates_where_kvm_is_not_said() -> None:
    """The box's Vagrantfile: QEMU's emulator with qemu64 and a 128 MiB translation cache
    unless GITOPS_VAGRANT_KVM=1, ~500 MB per VM, a management network without forwarding."""
    text = vagrantbox.BOX_VAGRANTFILE
    assert 'ENV["GITOPS_VAGRANT_KVM"] == "1"' in text
    assert 'lv.driver = "qemu"' in text and 'lv.cpu_model = "qemu64"' in text
    assert "<tb-cache unit='MiB'>128</tb-cache></tcg><pae" in text
    assert "lv.memory = 512" in text and 'management_network_mode = "none"' in text


def test_the_box_digest_follows_its_inputs(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    """A change to the box's inputs is a new digest, a new cache folder, and the added box
    whose marker holds the old digest is no longer current."""
    monkeypatch.setenv("GITOPS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path / "vagrant.d"))
    before, folder = vagrantbox.recipe_hash(), vagrantbox.box_dir()
    assert vagrantbox.added_digest() is None
    marker = (tmp_path / "vagrant.d/boxes/debian-VAGRANTSLASH-bookworm64/0/libvirt"
              / "gitops-recipe.json")
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"digest": before}))
    assert vagrantbox.added_digest() == before
    monkeypatch.setattr(vagrantbox, "INCLUDE", (*vagrantbox.INCLUDE, "jq"))
    assert vagrantbox.recipe_hash() != before and vagrantbox.box_dir() != folder
    assert vagrantbox.added_digest() != vagrantbox.recipe_hash()


def test_machines_variable_limits_the_vagrantfile(tmp_path: Path) -> None:
    """GITOPS_VAGRANT_MACHINES=web1 defines web1 alone; an unknown name is refused by name."""
    vagrant = _vagrant_or_skip()
    env = dict(os.environ, VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_CWD=str(REPO),
               VAGRANT_DOTFILE_PATH=str(tmp_path / ".vagrant"))

    def status(machines: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([vagrant, "status", "--machine-readable"], cwd=REPO,
                              env={**env, "GITOPS_VAGRANT_MACHINES": machines},
                              capture_output=True, text=True, timeout=300, check=False)

    one = status("web1")
    if one.returncode != 0 and "provider" in one.stdout + one.stderr:
        pytest.skip("no Vagrant provider installed to report machine states")
    assert one.returncode == 0, one.stderr
    assert set(parse_status(one.stdout)) == {"web1"}
    bad = status("web9")
    assert bad.returncode != 0 and "no machine web9" in bad.stdout + bad.stderr


# --- end to end: one real VM (libvirt, the box built offline by `gitops vagrant box`) ---------

DROPIN = "/etc/ssh/sshd_config.d/50-gitops-hardening.conf"


@pytest.fixture(scope="module")
def vm() -> Iterator[Path]:
    """The Vagrantfile's web1 up (box built or cached, libvirt started, networks isolated),
    booted in the background since collection (``tests/vagrantboot.py``); destroyed, and the
    isolation removed, afterwards. Fails under CI when it cannot run."""
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("the Vagrant end-to-end test cannot run under CI: not root",
                        pytrace=False)
        pytest.skip("the Vagrant end-to-end test needs root (libvirt, the box build)")
    folder = vagrantboot.start().folder
    try:
        problem = vagrantboot.wait()
        assert problem is None, problem
        yield folder
    finally:
        down = vagrantboot.stop()
        assert down is not None and down.returncode == 0, down and down.stderr
        proc = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert f"{folder.name}_{MACHINE}" not in proc.stdout


class Repo:
    """A state repository of the sample, its inventory ``inventories/vagrant.yml`` cut to the
    one machine, and the state folder of its runs."""

    def __init__(self, root: Path, folder: Path, *, guard: bool) -> None:
        self.path = root / "repo"
        self.state = root / "state"
        self.folder = folder
        copy_sample(self.path)
        inventory = yaml.safe_load((REPO / "inventories/vagrant.yml").read_text())
        inventory["hosts"] = {MACHINE: inventory["hosts"][MACHINE]}
        self.inventory = inventory
        service = self.path / "deploys/base/service.yml"
        service.write_text(service.read_text().replace(
            "guard: true", f"guard: {'true' if guard else 'false'}"))
        git_repo(self.path, {"inventories/vagrant.yml": yaml.safe_dump(inventory)}, "sample")

    def commit(self, message: str) -> None:
        (self.path / "inventories/vagrant.yml").write_text(yaml.safe_dump(self.inventory))
        commit(self.path, message)

    def gitops(self, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(*args, "--repo", str(self.path), "-e", "vagrant", "--state-dir",
                    str(self.state), folder=self.folder)

    def run_json(self, *args: str) -> tuple[int, dict[str, Any]]:
        proc = self.gitops(*args, "--json")
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.stdout.strip(), proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    def ssh(self, command: str, port: int | None = None) -> subprocess.CompletedProcess[str]:
        """``command`` on the VM as the SSH user Vagrant gives (``vagrant``, not root)."""
        host = read_hosts(self.folder)[MACHINE]
        return subprocess.run(
            ["ssh", "-i", str(host.key_file), "-p", str(port or host.port), "-o",
             "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
             "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
             f"{host.user}@{host.address}", command],
            capture_output=True, text=True, timeout=120, check=False)


def _changed(result: dict[str, Any]) -> int:
    return sum(op["status"] == "changed" for h in result["apply"]["hosts"] for op in h["ops"])


def test_the_sample_reconciles_onto_a_vagrant_vm_as_the_vagrant_user(
        vm: Path, tmp_path: Path) -> None:
    """On a real VM reached as the non-root ``vagrant`` user: plan, reconcile, verify, a
    no-change reconcile that changes nothing, a drifted file put back (base unguarded here)."""
    host = read_hosts(vm, expected=[MACHINE])[MACHINE]
    assert host.user == "vagrant"
    repo = Repo(tmp_path, vm, guard=False)
    plan = repo.gitops("plan")
    assert plan.returncode == 0, plan.stderr
    assert "on 1 of 1 host(s)" in plan.stdout, plan.stdout
    code, first = repo.run_json("reconcile", "--once")
    assert code == 0 and first["result"] == "succeeded", first
    assert _changed(first) > 0
    verify = repo.gitops("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    code, again = repo.run_json("reconcile", "--once")
    assert code == 0 and _changed(again) == 0, again
    assert "Hello from Vagrant" in repo.ssh("curl -s http://127.0.0.1/").stdout
    # drift: the motd edited by hand is found by verify and put back by the next reconcile
    assert repo.ssh("echo edited by hand | sudo tee /etc/motd").returncode == 0
    assert repo.gitops("verify").returncode != 0
    code, fixed = repo.run_json("reconcile", "--once")
    assert code == 0 and _changed(fixed) > 0, fixed
    assert repo.inventory["groups"]["all"]["services"]["base"]["motd"] in \
        repo.ssh("cat /etc/motd").stdout


def test_guarded_applies_as_the_vagrant_user_confirm_and_revert(
        vm: Path, tmp_path: Path) -> None:
    """base guarded, as the sample ships it, through sudo: a good change is Confirmed; sshd
    moved to port 2222 cuts the controller off and the VM reverts it by itself
    (RevertedByHost), SSH on 22 answers again."""
    repo = Repo(tmp_path, vm, guard=True)
    code, result = repo.run_json("reconcile", "--once")  # converged (the first test ran)
    assert code == 0, result
    repo.inventory["settings"]["guard"] = {"confirm_timeout": 15, "margin": 20}
    repo.inventory["groups"]["all"]["services"]["base"]["motd"] = "Guarded motd"
    repo.commit("motd: guarded")
    code, result = repo.run_json("reconcile", "--once")
    record = result["apply"]["hosts"][0]
    assert code == 0 and record["guard"]["result"] == "Confirmed", record
    assert "Guarded motd" in repo.ssh("cat /etc/motd").stdout
    before = repo.ssh(f"cat {DROPIN}").stdout
    conf = repo.path / "deploys/base/files/sshd-hardening.conf"
    conf.write_text(conf.read_text() + "Port 2222\n")
    repo.commit("sshd: listen on 2222")
    code, result = repo.run_json("reconcile", "--once")
    record = result["apply"]["hosts"][0]
    assert code == 1 and record["guard"]["result"] == "RevertedByHost", record
    assert repo.ssh(f"cat {DROPIN}").stdout == before
