"""The Vagrant box of the repository's ``Vagrantfile``: Debian 12 for libvirt, built offline.

``ensure_box()`` (``gitops vagrant box``) builds, once per recipe, a libvirt box the way the lab
builds its image (``gitops.lab.image``): debootstrap of bookworm minbase with a small virtio
kernel (``linux-image-cloud-amd64``), GRUB's BIOS images, ifupdown with DHCP on ``eth0``,
openssh-server, sudo, a ``vagrant`` user holding Vagrant's well-known insecure public key
(Vagrant swaps it for a key of its own at the first ``up``) with NOPASSWD sudo, SSH host keys
and machine-id made at first boot, and a ``file:`` apt repository inside the image with the
.debs the sample's deploys install (``image.MIRROR_PACKAGES``): the VMs reach no registry.

The disk is a raw file with one MBR partition: this machine's kernel may lack MBR partition
support, so the partition is attached with ``losetup --offset`` and GRUB is written with plain
byte copies (its ``boot.img`` into the MBR, a ``grub-mkimage`` core image after it) rather than
``grub-install``. It is converted to qcow2 and tarred with ``metadata.json`` and a Vagrantfile
into ``cache_dir()/vagrant-box-<recipehash>/``, then added as ``debian/bookworm64``. The box's
digest is stored beside it and inside the added box, so nothing is rebuilt or re-added until
the recipe changes. Building is the only step that reaches the package registries.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
import struct
import tarfile
import uuid
from pathlib import Path

from gitops.lab.common import LabError, cache_dir, run
from gitops.lab.image import MIRROR_PACKAGES, SUITE, inst_packages

__all__ = [
    "BOX_NAME",
    "BOX_VAGRANTFILE",
    "INCLUDE",
    "INSECURE_PUBLIC_KEY",
    "VIRTUAL_SIZE_GB",
    "added_digest",
    "box_dir",
    "ensure_box",
    "mbr",
    "recipe",
    "recipe_hash",
    "vagrant_home",
]

BOX_NAME = "debian/bookworm64"
"""The box name the repository's ``Vagrantfile`` asks for."""

INCLUDE = ("systemd", "systemd-sysv", "dbus", "openssh-server", "sudo", "python3", "iproute2",
           "ifupdown", "isc-dhcp-client", "linux-image-cloud-amd64", "grub-pc-bin", "procps")

RECIPE_VERSION = 1
"""Bump when the steps below change, so the cached box is rebuilt."""

VIRTUAL_SIZE_GB = 8
PARTITION_START = 2048
"""First sector of the root partition (1 MiB): GRUB's core image lives in the sectors before."""

APT_FOLDER = "var/lib/gitops-apt"
"""In-image folder of the ``file:`` repository the deploys install from."""

INSECURE_PUBLIC_KEY = (
    "ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niN"
    "ltGEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMz"
    "F8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJ"
    "nAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYC"
    "zRdK8jlqm8tehUc9c9WhQ== vagrant insecure public key"
)
"""Vagrant's well-known insecure key (its ``keys/vagrant.pub``): every box starts with it."""

TB_CACHE_MIB = 128
"""QEMU's translation cache under TCG (its default, 1 GiB, costs ~1 GB of RAM per VM)."""

BOX_VAGRANTFILE = f"""\
# The box's own settings, read before the project's Vagrantfile (gitops.lab.vagrantbox).
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    # No usable KVM (no vmx/svm): QEMU's emulator with a CPU model it emulates, and a small
    # translation cache. `gitops vagrant up` sets GITOPS_VAGRANT_KVM=1 where KVM works.
    if ENV["GITOPS_VAGRANT_KVM"] == "1"
      lv.driver = "kvm"
    else
      lv.driver = "qemu"
      lv.cpu_mode = "custom"
      lv.cpu_model = "qemu64"
      # vagrant-libvirt writes each feature as <NAME/>: this one closes into libvirt's
      # <tcg><tb-cache unit='MiB'>N</tb-cache></tcg> (libvirt >= 8.0), then <pae/>.
      lv.features = ["acpi", "apic",
                     "tcg><tb-cache unit='MiB'>{TB_CACHE_MIB}</tb-cache></tcg><pae"]
    end
    lv.memory = 512
    lv.cpus = 1
    lv.disk_bus = "virtio"
    lv.nic_model_type = "virtio"
    lv.graphics_type = "none"
    lv.video_type = "none"
    # The management network has no forwarding: the VMs reach this machine, not beyond.
    lv.management_network_mode = "none"
  end
end
"""


def recipe() -> dict[str, object]:
    """Every input of the box: a change to any of them rebuilds it."""
    return {
        "suite": SUITE,
        "variant": "minbase",
        "include": list(INCLUDE),
        "apt_packages": list(MIRROR_PACKAGES),
        "virtual_size_gb": VIRTUAL_SIZE_GB,
        "key": INSECURE_PUBLIC_KEY,
        "vagrantfile": BOX_VAGRANTFILE,
        "version": RECIPE_VERSION,
    }


def recipe_hash() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:12]


def box_dir() -> Path:
    return cache_dir() / f"vagrant-box-{recipe_hash()}"


def vagrant_home() -> Path:
    return Path(os.environ.get("VAGRANT_HOME") or Path.home() / ".vagrant.d")


def added_digest(name: str = BOX_NAME) -> str | None:
    """The recipe digest of the libvirt box Vagrant holds under ``name``, if gitops added it."""
    folder = vagrant_home() / "boxes" / name.replace("/", "-VAGRANTSLASH-")
    for marker in sorted(folder.glob("*/libvirt/gitops-recipe.json")):
        try:
            return str(json.loads(marker.read_text())["digest"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return None


def mbr(sectors: int, disk_id: int) -> bytes:
    """A DOS partition table of one bootable Linux partition from ``PARTITION_START`` to the
    end of a disk of ``sectors`` sectors (the 66 bytes from offset 440; boot code not set)."""
    count = sectors - PARTITION_START
    entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x83, b"\xfe\xff\xff",
                        PARTITION_START, count)
    return struct.pack("<IH", disk_id, 0) + entry + bytes(48) + b"\x55\xaa"


_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
        "LC_ALL": "C"}


def _debootstrap(rootfs: Path) -> None:
    rootfs.mkdir(parents=True)
    run(["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE,
         str(rootfs)], timeout=1800, env=_ENV)


def _apt_repository(rootfs: Path) -> None:
    """The .debs of ``MIRROR_PACKAGES`` (and what they need) as a ``file:`` repository, the
    image's only apt source."""
    chroot = ["chroot", str(rootfs)]
    run([*chroot, "apt-get", "update"], timeout=600, env=_ENV)
    sim = run([*chroot, "apt-get", "install", "-s", *MIRROR_PACKAGES], timeout=300, env=_ENV)
    needed = inst_packages(sim.stdout)
    run([*chroot, "apt-get", "clean"], timeout=60, env=_ENV)
    run([*chroot, "apt-get", "install", "-y", "--download-only", *MIRROR_PACKAGES],
        timeout=900, env=_ENV)
    repo = rootfs / APT_FOLDER
    repo.mkdir(mode=0o755, parents=True)
    debs = sorted((rootfs / "var/cache/apt/archives").glob("*.deb"))
    lacking = sorted(set(needed) - {deb.name.split("_", 1)[0] for deb in debs})
    if lacking:
        raise LabError(f"vagrant box: no .deb downloaded for {', '.join(lacking)}")
    for deb in debs:
        shutil.move(str(deb), repo / deb.name)
        (repo / deb.name).chmod(0o644)
    scan = run(["dpkg-scanpackages", "-m", ".", "/dev/null"], timeout=300, cwd=repo)
    (repo / "Packages").write_text(scan.stdout)
    with gzip.open(repo / "Packages.gz", "wt") as gz:
        gz.write(scan.stdout)
    for entry in (rootfs / "var/lib/apt/lists").iterdir():
        if entry.is_file():
            entry.unlink()
    (rootfs / "etc/apt/sources.list").write_text(
        f"deb [trusted=yes] file:/{APT_FOLDER} ./\n"
    )
    run([*chroot, "apt-get", "update"], timeout=300, env=_ENV)
    run([*chroot, "apt-get", "clean"], timeout=60, env=_ENV)


def _configure(rootfs: Path, root_uuid: str) -> None:
    """Network, users, first-boot identity, fstab."""
    chroot = ["chroot", str(rootfs)]
    (rootfs / "etc/network/interfaces").write_text(
        "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\n"
        "allow-hotplug eth0\niface eth0 inet dhcp\n"
    )
    (rootfs / "etc/fstab").write_text(f"UUID={root_uuid} / ext4 errors=remount-ro 0 1\n")
    (rootfs / "etc/hostname").write_text("bookworm\n")
    (rootfs / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 bookworm\n")
    run([*chroot, "useradd", "--create-home", "--shell", "/bin/bash", "vagrant"],
        timeout=60, env=_ENV)
    run([*chroot, "chpasswd"], input="vagrant:vagrant\n", timeout=60, env=_ENV)
    ssh = rootfs / "home/vagrant/.ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "authorized_keys").write_text(INSECURE_PUBLIC_KEY + "\n")
    (ssh / "authorized_keys").chmod(0o600)
    run([*chroot, "chown", "-R", "vagrant:vagrant", "/home/vagrant/.ssh"], timeout=60)
    sudoers = rootfs / "etc/sudoers.d/vagrant"
    sudoers.write_text("vagrant ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    # Host keys at first boot: every VM of the box gets its own.
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    dropin = rootfs / "etc/systemd/system/ssh.service.d"
    dropin.mkdir(parents=True)
    (dropin / "gitops-host-keys.conf").write_text(
        "[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\n"
        "ExecStartPre=/usr/sbin/sshd -t\n"
    )
    (rootfs / "etc/ssh/sshd_config.d/gitops-vagrant.conf").write_text("UseDNS no\n")
    (rootfs / "etc/machine-id").write_text("")
    (rootfs / "var/lib/dbus/machine-id").unlink(missing_ok=True)


def _kernel(rootfs: Path) -> tuple[str, str]:
    """The in-image paths of the kernel and its initramfs."""
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise LabError("vagrant box: debootstrap installed no kernel")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    if not (rootfs / f"boot/initrd.img-{version}").is_file():
        raise LabError(f"vagrant box: no initramfs for kernel {version}")
    return f"/boot/vmlinuz-{version}", f"/boot/initrd.img-{version}"


def _grub(rootfs: Path, root_uuid: str, core: Path) -> None:
    """GRUB's modules and a static grub.cfg in /boot/grub; its core image into ``core``."""
    vmlinuz, initrd = _kernel(rootfs)
    grub = rootfs / "boot/grub"
    grub.mkdir(parents=True, exist_ok=True)
    shutil.copytree(rootfs / "usr/lib/grub/i386-pc", grub / "i386-pc", dirs_exist_ok=True)
    (grub / "grub.cfg").write_text(
        "set default=0\nset timeout=0\nserial --unit=0 --speed=115200\n"
        "terminal_input serial console\nterminal_output serial console\n"
        f"search --no-floppy --fs-uuid --set=root {root_uuid}\n"
        "menuentry 'Debian GNU/Linux 12 (gitops box)' {\n"
        f"  linux {vmlinuz} root=UUID={root_uuid} ro console=tty0 console=ttyS0,115200n8 "
        "net.ifnames=0 biosdevname=0\n"
        f"  initrd {initrd}\n"
        "}\n"
    )
    run(["chroot", str(rootfs), "grub-mkimage", "-O", "i386-pc", "-d", "/usr/lib/grub/i386-pc",
         "-o", "/boot/grub/core.img", "-p", "(hd0,msdos1)/boot/grub",
         "biosdisk", "part_msdos", "ext2", "normal", "linux", "search", "search_fs_uuid",
         "configfile", "echo", "test", "serial", "terminal"], timeout=120, env=_ENV)
    shutil.move(str(grub / "core.img"), core)


def _disk(rootfs: Path, raw: Path, root_uuid: str, work: Path) -> None:
    """The raw disk: MBR and GRUB, one ext4 partition holding ``rootfs``."""
    size = VIRTUAL_SIZE_GB << 30
    sectors = size // 512
    core = work / "core.img"
    _grub(rootfs, root_uuid, core)
    boot = (rootfs / "usr/lib/grub/i386-pc/boot.img").read_bytes()
    core_bytes = core.read_bytes()
    if len(core_bytes) > (PARTITION_START - 1) * 512:
        raise LabError(f"vagrant box: GRUB core image too big ({len(core_bytes)} bytes)")
    with open(raw, "wb") as fh:
        fh.truncate(size)
        fh.write(boot[:440] + mbr(sectors, int.from_bytes(os.urandom(4), "little")))
        fh.seek(512)
        fh.write(core_bytes)
    offset = PARTITION_START * 512
    loop = run(["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit",
                str(size - offset), str(raw)], timeout=60).stdout.strip()
    mnt = work / "mnt"
    mnt.mkdir()
    try:
        run(["mkfs.ext4", "-q", "-F", "-U", root_uuid, "-L", "root", loop], timeout=300)
        run(["mount", loop, str(mnt)], timeout=60)
        try:
            run(["cp", "-a", f"{rootfs}/.", f"{mnt}/"], timeout=900)
        finally:
            run(["umount", str(mnt)], timeout=120)
    finally:
        run(["losetup", "-d", loop], timeout=60, check=False)


def _build(tmp: Path) -> None:
    rootfs = tmp / "rootfs"
    root_uuid = str(uuid.uuid4())
    _debootstrap(rootfs)
    _apt_repository(rootfs)
    _configure(rootfs, root_uuid)
    raw = tmp / "disk.raw"
    work = tmp / "work"
    work.mkdir()
    _disk(rootfs, raw, root_uuid, work)
    shutil.rmtree(rootfs)
    shutil.rmtree(work)
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(tmp / "box.img")],
        timeout=900)
    raw.unlink()
    meta = {"provider": "libvirt", "format": "qcow2", "virtual_size": VIRTUAL_SIZE_GB}
    (tmp / "metadata.json").write_text(json.dumps(meta) + "\n")
    (tmp / "Vagrantfile").write_text(BOX_VAGRANTFILE)
    (tmp / "gitops-recipe.json").write_text(
        json.dumps({"digest": recipe_hash(), "recipe": recipe()}, indent=2) + "\n"
    )
    with tarfile.open(tmp / "box.box", "w") as tar:
        for name in ("metadata.json", "Vagrantfile", "gitops-recipe.json", "box.img"):
            tar.add(tmp / name, arcname=name)
    (tmp / "box.img").unlink()


def _cleanup(tmp: Path) -> None:
    """Unmount and detach what a killed build left in ``tmp``, then remove it."""
    prefix = str(tmp.resolve()) + "/"
    with open("/proc/mounts") as fh:
        points = [line.split()[1] for line in fh]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        run(["umount", "-l", point], timeout=60, check=False)
    loops = run(["losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE"],
                timeout=30, check=False).stdout
    for line in loops.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1].startswith(prefix):
            run(["losetup", "-d", parts[0]], timeout=30, check=False)
    shutil.rmtree(tmp, ignore_errors=True)


def ensure_box(progress: bool = False) -> tuple[Path, bool]:
    """The box file of the current recipe, built first if missing; and whether it was built."""
    final = box_dir()
    box = final / "box.box"
    if box.is_file():
        return box, False
    base = cache_dir()
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "vagrant-box.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time on this machine
        if box.is_file():
            return box, False
        for stale in base.glob(".vagrant-box-*.tmp"):
            _cleanup(stale)
        tmp = base / f".vagrant-box-{recipe_hash()}-{os.getpid()}.tmp"
        if progress:
            print(f"gitops vagrant: building box {final} (once; a minute or two)", flush=True)
        try:
            tmp.mkdir()
            _build(tmp)
            os.rename(tmp, final)
        except BaseException:
            _cleanup(tmp)
            raise
        for old in base.glob("vagrant-box-*"):
            if old != final and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    return box, True
