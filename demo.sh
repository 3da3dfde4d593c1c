#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: install, boot a lab of three real
# hosts, reconcile this repository's sample state onto them, and show the verified result.
# The lab stays up afterwards so you can look around; `.venv/bin/gitops lab down` removes it.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: run as root (the lab boots hosts with systemd-nspawn)" >&2
    exit 2
fi
apt-get update -qq
apt-get install -y -qq debootstrap systemd-container dpkg-dev openssh-client git \
    python3-venv iproute2 gnupg >/dev/null
[ -x .venv/bin/gitops ] || { python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]'; }
gitops=.venv/bin/gitops
# The sample's secret (the app's token, inventories/lab.secrets.sops.yaml) is SOPS-encrypted
# for a throwaway demo age key committed in gitops/lab/: point the controller at it. A real
# deployment names its own key file here (settings [sops] age_key), never a committed one.
export GITOPS_SOPS="{\"age_key\": {\"file\": \"$PWD/gitops/lab/demo-age-key.txt\"}}"

# The sample state lives in this repository's commits: inventories/lab.yml + deploys/.
$gitops lab status >/dev/null 2>&1 && $gitops lab status --json | grep -q '"up": true' \
    || $gitops lab up --hosts 3
$gitops validate --repo . --environment lab
$gitops reconcile --once --repo . --environment lab
$gitops status --environment lab
echo
echo "nginx on each lab host, proxying to the app:"
for addr in 10.213.0.11 10.213.0.12 10.213.0.13; do
    printf '  http://%s/ -> ' "$addr"
    python3 -c "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())" "http://$addr/"
done
echo
echo "Next: ssh -F /var/lib/gitops/lab/gitops/ssh_config lab-1 | $gitops history | $gitops lab down"
