#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: install, boot a lab of three real
# hosts, reconcile this repository's sample state onto them, and show the verified result.
# The lab is named by $GITOPS_LAB_NAME (default gitops); inventories/lab.yml says
# `source: lab`, so its hosts' addresses and key come from that lab, whatever its name.
# GITOPS_DEMO_HOSTS=N (1-50, default 3) boots N hosts instead: the sample is then reconciled
# from a copy of this repository whose inventory declares lab-1..lab-N, all alike.
# The lab stays up afterwards so you can look around; `.venv/bin/gitops lab down` removes it.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive
export GITOPS_LAB_NAME="${GITOPS_LAB_NAME:-gitops}"
hosts="${GITOPS_DEMO_HOSTS:-3}"

if ! [[ "$hosts" =~ ^[0-9]+$ ]] || [ "$hosts" -lt 1 ] || [ "$hosts" -gt 50 ]; then
    echo "demo.sh: GITOPS_DEMO_HOSTS is how many hosts to boot: a number from 1 to 50," \
         "not '$hosts'" >&2
    exit 2
fi
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

# The sample state lives in this repository's commits: inventories/lab.yml + deploys/, on
# the branch checked out here (main in a fresh clone).
export GITOPS_BRANCH="${GITOPS_BRANCH:-$(git symbolic-ref --short -q HEAD || echo main)}"
repo=.
if [ "$hosts" -ne 3 ]; then  # the sample's inventory names three hosts: a copy names N
    repo="${GITOPS_STATE_DIR:-/var/lib/gitops}/demo-repo"
    rm -rf "$repo" && mkdir -p "$(dirname "$repo")"
    git clone -q --branch "$GITOPS_BRANCH" . "$repo"
    python3 - "$repo/inventories/lab.yml" "$hosts" <<'PY'
import sys
path, count = sys.argv[1], int(sys.argv[2])
head = open(path).read().partition("\nhosts:\n")[0]
body = "".join("  lab-%d:\n    groups: [web]\n" % i for i in range(1, count + 1))
open(path, "w").write(head + "\nhosts:\n" + body)
PY
    git -C "$repo" -c user.name=demo.sh -c user.email=demo@localhost commit -qam \
        "demo: the sample on $hosts host(s)"
fi
$gitops lab status --json | grep -q '"up": true' || $gitops lab up --hosts "$hosts"
$gitops validate --repo "$repo" --environment lab
$gitops reconcile --once --repo "$repo" --environment lab
$gitops status --environment lab
echo
echo "nginx on each host of lab $GITOPS_LAB_NAME, proxying to the app:"
$gitops lab status --json | DEMO_HOSTS="$hosts" python3 -c '
import json, os, sys, urllib.request
for host in json.load(sys.stdin)["hosts"][:int(os.environ["DEMO_HOSTS"])]:  # the inventory hosts
    url = "http://%s/" % host["address"]
    body = urllib.request.urlopen(url, timeout=5).read().decode().strip()
    print("  %s -> %s" % (url, body))
'
echo
echo "Next: ssh -F /var/lib/gitops/lab/$GITOPS_LAB_NAME/ssh_config lab-1" \
     "| $gitops history | $gitops lab down --name $GITOPS_LAB_NAME"
