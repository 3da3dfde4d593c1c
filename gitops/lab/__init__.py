"""Disposable local lab: real Debian hosts (systemd-nspawn in network namespaces)."""
