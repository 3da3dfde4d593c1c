"""Unit tests of the lab that need neither root nor the lab's tools."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from polling import wait_for

import gitops.lab as lab_api
from gitops.cli import main
from gitops.lab import common, hosts, image, mirror, network
from gitops.lab import sudo as lab_sudo
from gitops.model import InventoryFile
from gitops.pipeline import remote

HOSTS = (lab_api.LabHost("lab-1", "10.213.0.11"), lab_api.LabHost("lab-2", "10.213.0.12"))


@pytest.mark.parametrize("name", ["gitops", "a", "t1", "labdev", "abcdefgh", "12345678"])
def test_valid_names_are_accepted(name: str) -> None:
    """Names of 1 to 8 characters of [a-z0-9] are accepted as they are."""
    assert common.resolve_name(name) == name


@pytest.mark.parametrize("name", ["", "Gitops", "git-ops", "abcdefghi", "a_b", "a b", "é"])
def test_invalid_names_are_usage_errors(name: str) -> None:
    """Any other name is a LabError with exit code 2."""
    with pytest.raises(lab_api.LabError) as exc:
        common.resolve_name(name)
    assert exc.value.exit_code == 2


def test_name_defaults_to_env_then_gitops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a name, $GITOPS_LAB_NAME is used, else `gitops`."""
    monkeypatch.delenv("GITOPS_LAB_NAME", raising=False)
    assert common.resolve_name(None) == "gitops"
    monkeypatch.setenv("GITOPS_LAB_NAME", "t2")
    assert common.resolve_name(None) == "t2"


def test_default_lab_uses_the_documented_subnet() -> None:
    """Lab `gitops` uses 10.213.0.0/24, bridge .1, host i at .(10+i)."""
    net = common.default_subnet("gitops")
    assert net == ipaddress.IPv4Network("10.213.0.0/24")
    assert common.bridge_address(net) == "10.213.0.1"
    assert common.host_address(net, 1) == "10.213.0.11"
    assert common.host_address(net, 200) == "10.213.0.210"


def test_other_names_get_a_stable_distinct_24() -> None:
    """Other names map deterministically to 10.213.X.0/24 with X in 1..254."""
    nets = {n: common.default_subnet(n) for n in ("gitopsx", "t1", "t2", "labdev", "zzzzzzzz")}
    for net in nets.values():
        assert net.subnet_of(ipaddress.IPv4Network("10.213.0.0/16"))
        assert net.prefixlen == 24
        assert 1 <= net.network_address.packed[2] <= 254
    assert common.default_subnet("t1") == nets["t1"]
    assert nets["t1"] != nets["t2"]


@pytest.mark.parametrize("text", ["10.0.0.0/24", "10.213.0.0/16", "10.213.5.7/24", "nonsense"])
def test_subnet_override_must_be_a_24_in_the_lab_range(text: str) -> None:
    """`--subnet` accepts only a /24 network inside 10.213.0.0/16 (usage error otherwise)."""
    with pytest.raises(lab_api.LabError) as exc:
        common.parse_subnet(text)
    assert exc.value.exit_code == 2


def test_subnet_override_accepted() -> None:
    """A /24 inside 10.213.0.0/16 is accepted as the lab subnet."""
    assert common.parse_subnet("10.213.77.0/24") == ipaddress.IPv4Network("10.213.77.0/24")


def test_interface_names_fit_the_kernel_limit() -> None:
    """Bridge and veth names of an 8-character lab with 200 hosts are at most 15 chars."""
    assert len(common.bridge_name("abcdefgh")) <= 15
    assert len(common.veth_name("abcdefgh", common.MAX_HOSTS)) <= 15


def test_resource_patterns_do_not_match_a_longer_lab_name() -> None:
    """Resources of lab `gitopsx` never match the patterns of lab `gitops`."""
    assert common.netns_re("gitops").match("gitops-lab-3")
    assert not common.netns_re("gitops").match("gitopsx-lab-3")
    assert common.veth_re("gitops").match("gitops-v12")
    assert not common.veth_re("gitops").match("gitopsx-v12")
    assert not common.veth_re("gitops").match("gitops-v12x")


def test_ssh_config_has_every_host_and_required_options() -> None:
    """ssh_config names each lab-i with its address, root, the key, and no host key checks."""
    state = Path("/var/lib/gitops/lab/gitops")
    text = lab_api.render_ssh_config(state, state / "id_ed25519", HOSTS)
    assert "Host lab-1\n  HostName 10.213.0.11\n" in text
    assert "Host lab-2\n  HostName 10.213.0.12\n" in text
    for option in (
        "User root",
        f"IdentityFile {state}/id_ed25519",
        "UserKnownHostsFile /dev/null",
        "StrictHostKeyChecking no",
        "LogLevel ERROR",
        "ControlMaster auto",
        f"ControlPath {state}/cm-%n",
        "ControlPersist 60s",
    ):
        assert f"  {option}\n" in text


def test_inventory_validates_against_the_model() -> None:
    """The rendered inventory.yml validates as gitops.model.InventoryFile with group `lab`."""
    key = Path("/var/lib/gitops/lab/gitops/id_ed25519")
    doc = yaml.safe_load(lab_api.render_inventory(key, HOSTS))
    inv = InventoryFile.model_validate(doc)
    assert inv.hosts["lab-1"].address == "10.213.0.11"
    assert inv.hosts["lab-2"].groups == ["lab"]
    assert inv.settings.ssh.key_file == str(key)
    assert inv.settings.ssh.known_hosts_file == "/dev/null"
    assert inv.settings.ssh.host_key_checking == "no"


def test_a_sudo_login_inventory_logs_in_as_that_user_with_sudo() -> None:
    """With a sudo user (``lab up --sudo-user``) the inventory logs in as it, ``_sudo: true``
    for every host, and still validates; by the one rule its guard commands go through sudo."""
    key = Path("/var/lib/gitops/lab/gitops/id_ed25519")
    doc = yaml.safe_load(lab_api.render_inventory(key, HOSTS, "labsudo"))
    inv = InventoryFile.model_validate(doc)
    assert inv.settings.ssh.user == "labsudo"
    assert inv.groups["lab"].vars == {"_sudo": True}
    assert all(h.groups == ["lab"] for h in inv.hosts.values())
    assert remote.needs_sudo(inv.settings.ssh.user or "", inv.groups["lab"].vars["_sudo"])
    assert yaml.safe_load(lab_api.render_inventory(key, HOSTS))["settings"]["ssh"]["user"] == \
        "root"


@pytest.mark.parametrize("user", ["root", "Ops", "a;rm -rf /", "-x", "", "a" * 40])
def test_a_sudo_user_is_a_plain_account_name(user: str) -> None:
    """``--sudo-user`` refuses root and anything not an account name (exit 2), before any
    host boots or any shell text is written."""
    with pytest.raises(common.LabError) as err:
        lab_sudo.user_script(user)
    assert err.value.exit_code == 2 and "--sudo-user" in str(err.value)


def test_prerequisites_message_says_what_to_install() -> None:
    """Missing tools give one line with the exact apt-get command; not root is named."""
    msg = common.prerequisites_message(["root", "debootstrap", "systemd-nspawn"])
    assert "\n" not in msg
    assert "must run as root" in msg
    assert "debootstrap, systemd-nspawn" in msg
    assert "apt-get install debootstrap systemd-container dpkg-dev" in msg


def test_prerequisites_message_adds_packages_of_other_missing_tools() -> None:
    """A missing `ip` or `ssh` adds iproute2 / openssh-client to the install line."""
    msg = common.prerequisites_message(["systemd-nspawn", "ip", "ssh", "ssh-keygen"])
    assert msg.endswith(
        "install them with: apt-get install debootstrap systemd-container dpkg-dev "
        "iproute2 openssh-client"
    )


def test_cli_without_root_or_tools_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`gitops lab up` when prerequisites miss prints one line, exits 2 and makes nothing."""
    monkeypatch.setenv("GITOPS_LAB_DIR", str(tmp_path / "lab"))
    monkeypatch.setenv("GITOPS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(common, "missing_prerequisites", lambda *_a: ["root", "debootstrap"])
    result = CliRunner().invoke(main, ["lab", "up", "--name", "t9"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert INSTALL_LINE in result.output
    assert not (tmp_path / "lab").exists()
    assert not (tmp_path / "cache").exists()


INSTALL_LINE = "apt-get install debootstrap systemd-container dpkg-dev"


def test_cli_bad_name_is_a_usage_error() -> None:
    """`gitops lab up --name Bad!` exits 2 with one line naming the rule."""
    result = CliRunner().invoke(main, ["lab", "up", "--name", "Bad!"])
    assert result.exit_code == 2
    assert "[a-z0-9]" in result.output


def test_cli_too_many_hosts_is_a_usage_error() -> None:
    """`--hosts` outside 1..200 exits 2."""
    result = CliRunner().invoke(main, ["lab", "up", "--name", "t9", "--hosts", "201"])
    assert result.exit_code == 2


def test_cli_help_documents_exit_codes() -> None:
    """`gitops lab up --help` documents exit codes 0, 1 and 2."""
    result = CliRunner().invoke(main, ["lab", "up", "--help"])
    assert "Exit codes: 0" in result.output
    assert "1 runtime failure or lab already up" in result.output


def test_status_of_a_lab_that_is_not_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`current` is None and `status --json` says up: false when no lab.json exists."""
    monkeypatch.setenv("GITOPS_LAB_DIR", str(tmp_path))
    assert lab_api.current("t9") is None
    result = CliRunner().invoke(main, ["lab", "status", "--json", "--name", "t9"])
    assert result.exit_code == 0
    assert '"up": false' in result.output


def test_mirror_source_line() -> None:
    """Hosts' only apt source is the trusted mirror on the bridge address."""
    assert mirror.sources_line("10.213.0.1") == "deb [trusted=yes] http://10.213.0.1:9080/ ./\n"


def test_mirror_packages_are_declared_in_one_tuple() -> None:
    """The mirror carries at least nginx, tzdata and curl, declared in image.MIRROR_PACKAGES."""
    assert isinstance(image.MIRROR_PACKAGES, tuple)
    assert {"nginx", "tzdata", "curl"} <= set(image.MIRROR_PACKAGES)
    assert lab_api.MIRROR_PACKAGES is image.MIRROR_PACKAGES


def test_recipe_hash_follows_the_recipe(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The image cache path carries the recipe hash, which changes with the mirror packages."""
    monkeypatch.setenv("GITOPS_CACHE_DIR", str(tmp_path))
    first = image.image_dir()
    assert first.parent == tmp_path
    assert first.name == f"lab-image-{image.recipe_hash()}"
    monkeypatch.setattr(image, "MIRROR_PACKAGES", (*image.MIRROR_PACKAGES, "jq"))
    assert image.image_dir() != first


def test_simulated_install_output_is_parsed() -> None:
    """Package names are read from the `Inst` lines of `apt-get install -s`."""
    out = "NOTE: x\nInst nginx-common (1.22 Debian:12 [all])\nInst nginx (1.22 D)\nConf nginx\n"
    assert image.inst_packages(out) == ["nginx-common", "nginx"]


def test_nspawn_command_carries_the_lab_markers() -> None:
    """nspawn runs volatile, unregistered, in the host's netns, with the lab's machine name."""
    args = hosts.nspawn_args("t1", 2, Path("/img"), Path("/s/authorized_keys"), Path("/s/src"))
    for arg in (
        "--register=no",
        "--keep-unit",
        "--volatile=overlay",
        "--console=passive",
        "--network-namespace-path=/run/netns/t1-lab-2",
        "--machine=t1-lab-2",
        "--hostname=lab-2",
        "--bind-ro=/s/authorized_keys:/root/.ssh/authorized_keys",
    ):
        assert arg in args


def test_netns_listing_matches_only_the_own_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only namespaces named exactly `<name>-lab-<i>` are listed as the lab's."""
    for entry in ("gitops-lab-1", "gitops-lab-2", "gitopsx-lab-1", "gitops-lab-1x", "other"):
        (tmp_path / entry).touch()
    monkeypatch.setattr(network, "NETNS_RUN", str(tmp_path))
    assert network.list_netns("gitops") == ["gitops-lab-1", "gitops-lab-2"]


def test_subnet_probe_moves_to_the_next_third_octet() -> None:
    """When a name's /24 is taken, the next probe is the next third octet (wrapping in 1..254)."""
    first = common.default_subnet("t3").network_address.packed[2]
    second = common.default_subnet("t3", probe=1).network_address.packed[2]
    assert second == (first % 254) + 1
    assert common.default_subnet("gitops", probe=5) == common.default_subnet("gitops")


def test_old_images_are_pruned_unless_a_running_lab_uses_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """After a build, images of older recipes go, except one a running process still names."""
    monkeypatch.setenv("GITOPS_CACHE_DIR", str(tmp_path))
    keep, old, used = (tmp_path / f"lab-image-{x}" for x in ("aaaa", "bbbb", "cccc"))
    for folder in (keep, old, used):
        (folder / "rootfs").mkdir(parents=True)
    holder = subprocess.Popen(["sh", "-c", "sleep 30", "host", f"--directory={used}/rootfs"])
    try:  # Popen returns once forked: the holder names the image only after its exec
        wait_for(lambda: str(used) in " ".join(common.cmdlines().get(holder.pid, [])), 10,
                 "the holder process to run")
        assert image.prune_images(keep=keep) == [old]
        assert keep.is_dir() and used.is_dir() and not old.exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_lab_folder_too_deep_for_ssh_sockets_is_refused_before_booting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A GITOPS_LAB_DIR so deep that SSH's control sockets cannot bind is one clear message
    (exit 2) naming the setting, not a boot that "did not answer SSH in time"."""
    deep = tmp_path / ("d" * 60)
    monkeypatch.setenv("GITOPS_LAB_DIR", str(deep))
    with pytest.raises(lab_api.LabError) as caught:
        lab_api.up(hosts=1, name="deep")
    assert caught.value.exit_code == 2
    assert "too deep for SSH's control sockets" in str(caught.value)
    assert "GITOPS_LAB_DIR" in str(caught.value)
    assert not (deep / "deep").exists()
    monkeypatch.setenv("GITOPS_LAB_DIR", "/var/lib/gitops/lab")
    lab_api.check_socket_path(common.state_dir("gitops"), 16)  # the default folder fits
