"""Test helper: random mutations of the sample state repository, and the loader's verdict.

Used by tests/test_fuzz_load.py (driven by Hypothesis through a ``random.Random`` it
controls) and bench/fuzz.py (seeded, 10,000 mutations). A mutant is a copy of the project's
``inventories/lab.yml`` and ``deploys/`` with one to three changes: values of other types,
keys added, removed, renamed or duplicated, hostile strings (newlines, ssh_config
directives, control characters, bytes that are not UTF-8), YAML tags, anchors and aliases,
broken indentation, and edits of a service's ``deploy.py``, ``checks.py`` or ``model.py``.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gitops.errors import InvalidDeclaration
from gitops.model import (
    DeclaredHost,
    DeclaredState,
    check_address,
    check_host_name,
    check_path,
    check_user,
    unsafe_reason,
)
from gitops.pipeline.load import load

PROJECT = Path(__file__).resolve().parent.parent
INVENTORY = "inventories/lab.yml"
SERVICES = ("app", "base", "web")
PY_FILES = ("deploy.py", "checks.py", "model.py")

NASTY = [
    "10.213.0.11\n  ProxyCommand sh -c 'touch /tmp/gitops-fuzz-pwned'",
    "-oProxyCommand=touch /tmp/gitops-fuzz-pwned", "root\nHost *", "a b", "", " ", "\t",
    "10.0.0.256", "fe80::1%eth0", "::1", "2001:db8::1", "host.example.com", "x" * 300,
    "../../etc/passwd", "/etc/passwd", "~/.ssh/id_ed25519", "/k/\"quoted\"", "%h%p", "$(id)",
    "`id`", "a;b", "\x00", "\x07bell", "\x85", "\u2028", "é", "🙂", "yes", "no", "null", "~",
    "0x1F", "1e999", ".nan", "2024-01-01", "*alias", "&anchor", "!!python/object:os.system",
]
"""Strings that have broken or fooled validators: injections, edge syntax, odd characters."""

YAML_SNIPPETS = [
    "!!python/object/apply:os.system ['touch /tmp/gitops-fuzz-pwned']", "!!binary aGVsbG8=",
    "!!set {a, b}", "!!timestamp 2024-01-01", "!custom x", "&a [1, 2]", "*a", "*nope",
    "<<: {x: 1}", "? [1, 2]\n  : x", "---\nx: 1", "{a: 1, a: 2}", "[[[[[[[[[[]]]]]]]]]]",
    "'unterminated", '"\\x07"', "|\n  block\n", "%YAML 1.1", "@", "`", "\t", ": ", "- ",
    "yes", "~", "0o17", "-.inf",
]
TEXT_CHARS = [*":-[]{},&*!|>'\"%@`#?\t\n ", "\x00", "\x1b", "\x85", "\u2028", "é", "🙂"]
BAD_BYTES = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80", b"\xfe\xff"]
PY_SNIPPETS = [
    "(", ")", ":", "  ", "\t", "def", "import nosuchmodule\n", "raise RuntimeError('x')\n",
    "\nParams = 1\n", "\ndef test_extra(host, other):\n    pass\n", "\nasync def test_a(host):\n"
    "    pass\n", "\nx = 1 +\n", "\x00", "return\n", "\ndef test_ok(host, params, *args):\n"
    "    pass\n", "'''", "lambda: (yield)\n",
]


@dataclass(frozen=True)
class Verdict:
    """What the loader made of a mutant."""

    kind: str
    """``valid``, ``rejected`` (every problem has file and line), ``rejected-no-line`` or
    ``crash`` (any other exception) or ``unsafe`` (accepted, but a host value breaks the
    documented syntax)."""
    detail: str = ""


LAB_SSH = """  ssh:
    user: root
    key_file: /var/lib/gitops/lab/gitops/id_ed25519
    known_hosts_file: /dev/null
    host_key_checking: "no"
"""


def explicit_hosts(text: str) -> str:
    """The sample's ``source: lab`` inventory with the hosts' addresses and SSH settings
    written out (the default lab's), as an inventory of real hosts is: the values that reach
    an ssh_config are what validation must hold to its syntax, and no lab needs to be up."""
    assert "  source: lab\n" in text
    text = text.replace("  source: lab\n", LAB_SSH, 1)
    for i in (1, 2, 3):
        text = text.replace(f"  lab-{i}:\n", f"  lab-{i}:\n    address: 10.213.0.1{i}\n", 1)
    return text


def make_sample(target: Path, *, links: bool = True) -> Path:
    """A copy of the project's sample state (``inventories/lab.yml``, ``deploys/``): the
    files a mutation may change are copied, the others (templates, files) linked to the
    project's (``links=False``: copied too, as a Git repository needs)."""
    (target / "inventories").mkdir(parents=True)
    (target / INVENTORY).write_text(explicit_hosts((PROJECT / INVENTORY).read_text()))
    if not links:
        shutil.copytree(PROJECT / "deploys", target / "deploys",
                        ignore=shutil.ignore_patterns("__pycache__"))
        return target
    for service in SERVICES:
        (target / "deploys" / service).mkdir(parents=True)
        for entry in (PROJECT / "deploys" / service).iterdir():
            if entry.name in PY_FILES:
                shutil.copy(entry, target / "deploys" / service / entry.name)
            elif entry.name != "__pycache__":
                (target / "deploys" / service / entry.name).symlink_to(entry)
    return target


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return rng.choice([0, -1, 1, 22, 65535, 65536, 2**70, rng.randint(-10**6, 10**6)])
    if kind == 1:
        return rng.choice([0.5, -1.0, 1e308, float("inf"), float("nan")])
    if kind == 2:
        return rng.choice([True, False])
    if kind == 3:
        return None
    if kind in (4, 5):
        if rng.random() < 0.6:
            return rng.choice(NASTY)
        return "".join(rng.choice(TEXT_CHARS + list("abcxyz019._/")) for _ in
                       range(rng.randrange(1, 12)))
    if kind == 6:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {_random_key(rng): _random_value(rng, depth + 1) for _ in range(rng.randrange(3))}


def _random_key(rng: random.Random) -> Any:
    return rng.choice(["address", "groups", "ssh", "user", "port", "key_file", "services",
                       "vars", "settings", "hosts", "web", "app", "base", "all", "lab-9",
                       "typo", "message", "admin_user", *rng.sample(NASTY, 2), 1, True, None])


def _paths(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*path, i))
    return out


def _structured(text: str, rng: random.Random) -> tuple[str, str]:
    """Change the parsed inventory (a value's type, a key) and write it back as YAML."""
    data = yaml.safe_load(text)
    paths = [p for p in _paths(data) if p]
    if not paths:
        return text, "nothing to change"
    path = rng.choice(paths)
    parent: Any = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    op = rng.randrange(5)
    if op == 0:
        parent[last] = _random_value(rng)
        what = "value replaced"
    elif op == 1:
        del parent[last]
        what = "removed"
    elif op == 2 and isinstance(parent, dict):
        parent[_random_key(rng)] = parent.pop(last)
        what = "key renamed"
    elif op == 3 and isinstance(parent, dict):
        parent[_random_key(rng)] = _random_value(rng)
        what = "key added"
    else:
        parent[last] = [parent[last]] if rng.random() < 0.5 else {"x": parent[last]}
        what = "wrapped"
    try:
        return yaml.safe_dump(data, allow_unicode=rng.random() < 0.5), f"{what} at {path!r}"
    except yaml.YAMLError:  # a key PyYAML cannot write back: keep the text
        return text, "unchanged"


def _textual(text: str, rng: random.Random) -> tuple[str, str]:
    """Edit the inventory's text: characters, lines, indentation, YAML constructs."""
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    op = rng.randrange(6)
    if op == 0:
        pos = rng.randrange(len(text) + 1)
        return text[:pos] + rng.choice(TEXT_CHARS) + text[pos:], "character inserted"
    if op == 1:
        pos = rng.randrange(len(text) + 1)
        return text[:pos] + text[pos + rng.randrange(1, 20):], "span deleted"
    if op == 2:
        lines.insert(i, lines[i])
        return "\n".join(lines), f"line {i + 1} duplicated"
    if op == 3:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines), "lines swapped"
    if op == 4:
        lines[i] = " " * rng.randrange(0, 9) + lines[i].lstrip()
        return "\n".join(lines), "indentation changed"
    head, sep, _value = lines[i].partition(": ")
    lines[i] = f"{head}{sep or ': '}{rng.choice(YAML_SNIPPETS)}"
    return "\n".join(lines), "YAML construct"


def _python(folder: Path, rng: random.Random) -> str:
    """Edit, remove or break one Python file of a service."""
    service = rng.choice(SERVICES)
    name = rng.choice(PY_FILES)
    path = folder / "deploys" / service / name
    if not path.exists():
        return f"{service}/{name} already removed"
    op = rng.randrange(4)
    if op == 0 and name != "deploy.py":
        path.unlink()
        return f"{service}/{name} removed"
    source = path.read_text(encoding="utf-8")
    if op == 1:
        lines = source.split("\n")
        del lines[rng.randrange(len(lines))]
        path.write_text("\n".join(lines), encoding="utf-8")
        return f"{service}/{name} line removed"
    if op == 2 and name == "checks.py":
        path.write_text(source.replace("(host, params)", "(host, prams)")
                        .replace("def test_", rng.choice(["def test_", "def check_"])),
                        encoding="utf-8")
        return f"{service}/{name} signature or names changed"
    pos = rng.randrange(len(source) + 1)
    path.write_text(source[:pos] + rng.choice(PY_SNIPPETS) + source[pos:], encoding="utf-8")
    return f"{service}/{name} edited"


def mutate(folder: Path, rng: random.Random) -> list[str]:
    """Apply one to three random mutations to the sample copy in ``folder``; say which."""
    done = []
    inventory = folder / INVENTORY
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(10)
        if kind < 4:
            try:
                text = inventory.read_text(encoding="utf-8")
                if kind < 2:
                    text, what = _structured(text, rng)
                else:
                    text, what = _textual(text, rng)
            except (UnicodeDecodeError, yaml.YAMLError, ValueError):
                what = "unchanged (already unreadable)"
            else:
                inventory.write_text(text, encoding="utf-8", errors="surrogatepass")
        elif kind < 7:
            text, what = _textual(inventory.read_bytes().decode("utf-8", "replace"), rng)
            inventory.write_text(text, encoding="utf-8", errors="replace")
        elif kind == 7:
            raw = bytearray(inventory.read_bytes())
            pos = rng.randrange(len(raw) + 1)
            raw[pos:pos] = rng.choice(BAD_BYTES)
            inventory.write_bytes(bytes(raw))
            what = "bytes that are not UTF-8"
        else:
            what = _python(folder, rng)
        done.append(what)
    return done


def verdict(folder: Path) -> tuple[Verdict, DeclaredState | None]:
    """Load ``lab`` from ``folder`` and classify the outcome (never raises)."""
    try:
        state = load(folder, "lab")
    except InvalidDeclaration as exc:
        missing = [str(p) for p in exc.problems if not p.file or not p.line]
        if missing or not exc.problems:
            return Verdict("rejected-no-line", "; ".join(missing) or "no problems"), None
        return Verdict("rejected"), None
    except Exception as exc:
        return Verdict("crash", f"{type(exc).__name__}: {exc}"), None
    unsafe = [h.name for h in state.hosts if not _safe(h)]
    if unsafe:
        return Verdict("unsafe", f"unsafe values accepted for {unsafe}"), state
    return Verdict("valid"), state


def _safe(h: DeclaredHost) -> bool:
    """Whether every value of ``h`` that reaches an ssh_config or a command line has its
    documented syntax."""
    try:
        check_host_name(h.name)
        check_address(h.address)
        check_user(h.ssh.user)
        for path in (h.ssh.key_file, h.ssh.known_hosts_file):
            if path is not None:
                check_path(path)
    except ValueError:
        return False
    return 1 <= h.ssh.port <= 65535 and not any(unsafe_reason(g) for g in h.groups)
