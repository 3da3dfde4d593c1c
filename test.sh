#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine, as root: install the system packages the
# tests use (the lab's tools, chromium for the page, promtool, PostgreSQL), the project in
# .venv, then run pytest. Arguments go to pytest and its exit code is this script's; without
# arguments, the whole suite (tests/, the Vagrant VM's tests in a process of their own
# beside the rest). .ci/run runs this script with CI=true. Without root the packages are
# not installed, and the tests that need them (lab, browser) are skipped.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

# The one list of the suite's system packages.
# The Vagrant VMs (tests/test_vagrant.py, `gitops vagrant`): vagrant with its libvirt provider,
# libvirt and QEMU (no service manager needed), dnsmasq and the firewall tools libvirt uses.
PACKAGES=(debootstrap systemd-container dpkg-dev openssh-client git python3-venv iproute2
          vagrant gnupg chromium prometheus postgresql
          vagrant-libvirt libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu
          dnsmasq-base iptables ebtables qemu-system-x86 qemu-utils)

if [ "$(id -u)" -eq 0 ]; then
    missing=()
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get update
        apt-get install -y "${missing[@]}"
    fi
else
    echo "test.sh: not root: system packages not installed; lab and browser tests skip" >&2
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install --upgrade pip
fi
.venv/bin/pip install -q -e '.[dev,bench,docs]'  # bench: ansible-core, for tests/test_bench_quick.py;
# docs: mkdocs, for tests/test_docs_site.py

# The OpenID provider of the sign-in tests (tests/oidc: oidc-provider, pinned by its lock file);
# it needs Node.js 20 or newer (this machine kind has it; Debian 12's own nodejs is too old).
if command -v npm >/dev/null && [ ! -d tests/oidc/node_modules/oidc-provider ]; then
    npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error
fi

if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"
fi

# The whole suite. The Vagrant VM's tests (an emulated VM: minutes of mostly waiting) run
# beside the rest, in a second pytest process whose output follows the first's; the exit
# code is the first failure's (pytest's 5, nothing collected, only when both say so).
side_dir=$(mktemp -d /tmp/gitops-test-vagrant.XXXXXX)
.venv/bin/python -m pytest tests/test_vagrant.py -p no:cacheprovider \
    --basetemp="$side_dir/tmp" >"$side_dir/log" 2>&1 &
side=$!
status=0
.venv/bin/python -m pytest tests/ --ignore=tests/test_vagrant.py || status=$?
side_status=0
wait "$side" || side_status=$?
echo
echo "=== tests/test_vagrant.py, run beside the rest (exit $side_status) ==="
cat "$side_dir/log"
rm -rf "$side_dir"
for code in "$status" "$side_status"; do
    if [ "$code" -ne 0 ] && [ "$code" -ne 5 ]; then
        exit "$code"
    fi
done
if [ "$status" -eq 5 ] && [ "$side_status" -eq 5 ]; then
    exit 5
fi
exit 0
