"""SOPS-encrypted files: the sops tool's own files open, tampered ones are refused by name,
secrets reach the declared state and never a message."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from mutations import explicit_hosts
from pyrage import x25519

from gitops.errors import InvalidDeclaration
from gitops.pipeline import sops
from gitops.pipeline.load import load
from gitops.pipeline.sopscipher import Session
from gitops.settings import SecretRef, SopsSettings
from gitops.workers.secrets import CHANGED, HIDDEN, RedactingStream, redact, redact_text

FIXTURES = Path(__file__).parent / "fixtures" / "sops"
PROJECT = Path(__file__).resolve().parent.parent
PGP = SopsSettings(pgp_key=SecretRef(file=FIXTURES / "sops_functional_tests_key.asc"))
CANARY = "canary-5e1f0b7d9a3c4e21"

needs_gpg = pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg (gnupg) not installed")


@pytest.fixture
def age(tmp_path: Path) -> tuple[str, SopsSettings]:
    identity = x25519.Identity.generate()
    key_file = tmp_path / "age.key"
    key_file.write_text(f"# a test key\n{identity}\n")
    return str(identity.to_public()), SopsSettings(age_key=SecretRef(file=key_file))


def _write(path: Path, document: dict[str, Any], fmt: str = "yaml") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "yaml":
        path.write_text(sops.to_yaml(document))
    elif fmt == "dotenv":
        meta = document["sops"]
        lines = [f"{k}={v}" for k, v in document.items() if k != "sops"]
        lines += [f"sops_age__list_0__map_{k}={v}".replace("\n", "\\n")
                  for k, v in meta["age"][0].items()]
        lines += [f"sops_{k}={v}" for k, v in meta.items() if k != "age"]
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text(json.dumps(document, indent=4))
    return path


# -- files written by the sops tool ---------------------------------------------------------


@needs_gpg
@pytest.mark.parametrize(("name", "fmt", "expected"), [
    ("format.enc.yaml", "yaml", {"foo": "bar"}),
    ("format.enc.json", "json", {"foo": "bar"}),
    ("format.enc.env", "dotenv", {"foo ": " bar"}),
])
def test_sops_written_pgp_files_decrypt(name: str, fmt: str, expected: dict[str, str]) -> None:
    """Files the sops tool encrypted for its PGP test key decrypt, their MAC checked."""
    assert sops.decrypt(FIXTURES / name, PGP, fmt).data == expected


def test_sops_written_age_data_key_opens() -> None:
    """An age-encrypted data key written by sops' own tests opens with its test identity."""
    identity = FIXTURES / "age_keysource_test.txt"
    session = Session(SopsSettings(age_key=SecretRef(file=identity)))
    enc = (FIXTURES / "age_keysource_test.enc").read_text()
    assert session._age_open(enc) == b"data"


SSH_AGE = SopsSettings(age_key=SecretRef(file=FIXTURES / "ssh-ed25519-key"))


def test_sops_written_age_document_decrypts() -> None:
    """A whole document that sops 3.13.3 wrote for an age recipient (an ssh-ed25519 key, as
    sops-nix's tests do) decrypts with that key, its MAC checked."""
    doc = sops.decrypt(FIXTURES / "sops-nix-native-ssh.enc.yaml", SSH_AGE)
    assert doc.data == {"test_key": "test_value"}


def test_tampered_sops_written_age_document_is_refused(tmp_path: Path) -> None:
    """The same age document with its value changed, or a key that does not open it, is
    refused with the file named."""
    text = (FIXTURES / "sops-nix-native-ssh.enc.yaml").read_text()
    bad = tmp_path / "bad.enc.yaml"
    bad.write_text(text.replace("data:TqlrhelNtC0QxQ==", "data:TqlrhelNtC0QxA=="))
    with pytest.raises(sops.SopsError, match="does not decrypt"):
        sops.decrypt(bad, SSH_AGE)
    other = SopsSettings(age_key=SecretRef(file=FIXTURES / "age_keysource_test.txt"))
    with pytest.raises(sops.SopsError):
        sops.decrypt(FIXTURES / "sops-nix-native-ssh.enc.yaml", other)


@needs_gpg
def test_tampered_sops_written_value_is_refused(tmp_path: Path) -> None:
    """Changing one encrypted byte of a sops-written file is refused, the file named."""
    text = (FIXTURES / "format.enc.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("data:8CvE", "data:8CvF"))
    with pytest.raises(sops.SopsError, match="does not decrypt"):
        sops.decrypt(bad, PGP)


@needs_gpg
def test_tampered_sops_written_mac_is_refused(tmp_path: Path) -> None:
    """A sops-written file whose MAC was replaced (lastmodified changed) is refused."""
    text = (FIXTURES / "format.enc.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("2026-05-22T20:16:23Z", "2026-05-22T20:16:24Z"))
    with pytest.raises(sops.SopsError, match="MAC"):
        sops.decrypt(bad, PGP)


@needs_gpg
def test_pgp_uses_a_throwaway_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PGP decryption leaves the user's GnuPG home untouched and no temporary home behind."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(home))
    left = lambda: set(Path(tempfile.gettempdir()).glob(f"{sops.GNUPG_PREFIX}*"))  # noqa: E731
    before = left()
    seen: list[Path] = []
    mkdtemp = tempfile.mkdtemp

    def spy(*args: Any, **kwargs: Any) -> str:
        made = mkdtemp(*args, **kwargs)
        seen.append(Path(made))
        assert Path(made).stat().st_mode & 0o777 == 0o700
        return made

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    assert sops.decrypt(FIXTURES / "format.enc.json", PGP).data == {"foo": "bar"}
    assert seen and not any(p.exists() for p in seen)
    assert list(home.iterdir()) == []
    assert left() <= before


# -- this project's documents ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_every_value_type_round_trips(tmp_path: Path, age: tuple[str, SopsSettings],
                                      fmt: str) -> None:
    """Strings, ints, floats, bools, lists and nesting decrypt to what was encrypted."""
    recipient, keys = age
    plain = {"a": {"s": "text", "i": 42, "f": 0.000015, "big": 1e21, "yes": True, "no": False,
                   "l": ["x", 1, {"deep": "y"}], "empty": "", "none": None}}
    path = _write(tmp_path / f"doc.{fmt}", sops.encrypt(plain, [recipient]), fmt)
    assert sops.decrypt(path, keys).data == plain


def test_dotenv_and_binary_documents(tmp_path: Path, age: tuple[str, SopsSettings]) -> None:
    """dotenv and binary (``{"data": ENC[...]}``) documents decrypt."""
    recipient, keys = age
    env = _write(tmp_path / "a.env", sops.encrypt({"TOKEN": CANARY, "N": "1"}, [recipient]),
                 "dotenv")
    assert sops.decrypt(env, keys).data == {"TOKEN": CANARY, "N": "1"}
    binary = _write(tmp_path / "b.conf", sops.encrypt({"data": f"x = {CANARY}\n"}, [recipient]),
                    "json")
    plain, _ = sops.plain_file(Session(keys), binary.read_bytes(), "binary")
    assert plain == f"x = {CANARY}\n".encode()


def test_encrypted_regex_leaves_other_values_plain(tmp_path: Path,
                                                   age: tuple[str, SopsSettings]) -> None:
    """With encrypted_regex only matching keys are encrypted; the MAC still covers all."""
    recipient, keys = age
    doc = sops.encrypt({"user": "ops", "password": CANARY}, [recipient],
                       encrypted_regex="^password$")
    assert doc["user"] == "ops" and doc["password"].startswith("ENC[")
    path = _write(tmp_path / "r.yaml", doc)
    assert sops.decrypt(path, keys).data == {"user": "ops", "password": CANARY}
    path.write_text(path.read_text().replace("user: ops", "user: root"))
    with pytest.raises(sops.SopsError, match="MAC mismatch"):
        sops.decrypt(path, keys)


def test_value_moved_to_another_key_is_refused(tmp_path: Path,
                                               age: tuple[str, SopsSettings]) -> None:
    """An encrypted value copied under another key does not decrypt (its path is bound)."""
    recipient, keys = age
    doc = sops.encrypt({"a": CANARY, "b": "other-value"}, [recipient])
    doc["b"] = doc["a"]
    with pytest.raises(sops.SopsError, match="b does not decrypt"):
        sops.decrypt(_write(tmp_path / "m.yaml", doc), keys)


def test_plain_value_slipped_in_is_refused(tmp_path: Path, age: tuple[str, SopsSettings]) -> None:
    """A plain value where an encrypted one belongs is refused, not taken."""
    recipient, keys = age
    doc = sops.encrypt({"a": CANARY}, [recipient])
    doc["a"] = 7
    with pytest.raises(sops.SopsError, match="should be encrypted"):
        sops.decrypt(_write(tmp_path / "p.yaml", doc), keys)


def test_wrong_key_and_not_sops(tmp_path: Path, age: tuple[str, SopsSettings]) -> None:
    """No matching key, and a file without sops metadata, are refused with a reason."""
    recipient, _ = age
    other = tmp_path / "other.key"
    other.write_text(str(x25519.Identity.generate()))
    path = _write(tmp_path / "w.yaml", sops.encrypt({"a": CANARY}, [recipient]))
    with pytest.raises(sops.SopsError, match="no configured key opens it"):
        sops.decrypt(path, SopsSettings(age_key=SecretRef(file=other)))
    plain = tmp_path / "plain.yaml"
    plain.write_text("a: b\n")
    with pytest.raises(sops.SopsError, match="no sops metadata"):
        sops.decrypt(plain, SopsSettings(age_key=SecretRef(file=other)))


# -- in the declared state ------------------------------------------------------------------


def _sample(dest: Path, recipient: str, token: str = CANARY) -> Path:
    shutil.copytree(PROJECT / "deploys", dest / "deploys")
    (dest / "inventories").mkdir()
    (dest / "inventories/lab.yml").write_text(
        explicit_hosts((PROJECT / "inventories/lab.yml").read_text()))
    secrets = {"groups": {"web": {"services": {"app": {"token": token}}}}}
    _write(dest / "inventories/lab.secrets.sops.yaml", sops.encrypt(secrets, [recipient]))
    return dest


def test_secrets_file_merges_into_parameters(tmp_path: Path,
                                             age: tuple[str, SopsSettings]) -> None:
    """The secrets file's values reach every host's parameters, plain, and are marked secret."""
    recipient, keys = age
    state = load(_sample(tmp_path, recipient), "lab", keys=keys)
    for host in state.hosts:
        assert host.services["app"]["token"] == CANARY
        assert host.services["app"]["message"].startswith("Hello from")  # merged, not replaced
    assert CANARY in state.redact


def test_secretstr_parameter_is_redacted_even_in_plain_text(tmp_path: Path) -> None:
    """A SecretStr parameter written in plain text is still kept out of output."""
    root = tmp_path
    shutil.copytree(PROJECT / "deploys", root / "deploys")
    (root / "inventories").mkdir()
    inv = yaml.safe_load(explicit_hosts((PROJECT / "inventories/lab.yml").read_text()))
    inv["groups"]["web"]["services"]["app"]["token"] = CANARY
    (root / "inventories/lab.yml").write_text(yaml.safe_dump(inv))
    state = load(root, "lab")
    assert state.redact == (CANARY,)


def test_whole_inventory_encrypted_inline(tmp_path: Path, age: tuple[str, SopsSettings]) -> None:
    """An inventory encrypted by sops (encrypted_regex: only the token) loads decrypted."""
    recipient, keys = age
    shutil.copytree(PROJECT / "deploys", tmp_path / "deploys")
    inv = yaml.safe_load(explicit_hosts((PROJECT / "inventories/lab.yml").read_text()))
    inv["groups"]["web"]["services"]["app"]["token"] = CANARY
    doc = sops.encrypt(inv, [recipient], encrypted_regex="^token$")
    _write(tmp_path / "inventories/lab.yml", doc)
    state = load(tmp_path, "lab", keys=keys)
    assert state.host("lab-1").services["app"]["token"] == CANARY


def test_tampered_secrets_file_is_an_invalid_declaration(tmp_path: Path,
                                                         age: tuple[str, SopsSettings]) -> None:
    """A tampered secrets file stops the load, naming the file and never the value."""
    recipient, keys = age
    root = _sample(tmp_path, recipient)
    path = root / "inventories/lab.secrets.sops.yaml"
    data = yaml.safe_load(path.read_text())
    enc = data["groups"]["web"]["services"]["app"]["token"]
    flipped = enc.replace("data:", "data:A", 1).replace("data:AA", "data:B", 1)
    data["groups"]["web"]["services"]["app"]["token"] = flipped
    path.write_text(sops.to_yaml(data))
    with pytest.raises(InvalidDeclaration) as err:
        load(root, "lab", keys=keys, revision="main@sha1:abc")
    [problem] = err.value.problems
    assert problem.file == "inventories/lab.secrets.sops.yaml"
    assert problem.line == path.read_text().splitlines().index(
        next(line for line in path.read_text().splitlines() if "token:" in line)) + 1
    assert "groups.web.services.app.token does not decrypt" in problem.message
    assert CANARY not in str(err.value)


def test_secrets_no_key_opens_hide_no_other_problem(tmp_path: Path,
                                                    age: tuple[str, SopsSettings]) -> None:
    """A secrets file and a deploy file that no configured key opens are reported with a
    syntax error in a deploy.py of the same commit, all at once (the rest is checked
    without the secrets)."""
    recipient, _ = age
    root = _sample(tmp_path, recipient)
    enc = root / "deploys/app/files/extra.sops.conf"
    _write(enc, sops.encrypt({"data": f"key={CANARY}\n"}, [recipient]), "json")
    deploy = root / "deploys/web/deploy.py"
    deploy.write_text("if broken\n" + deploy.read_text())
    other = tmp_path / "other.key"
    other.write_text(f"{x25519.Identity.generate()}\n")
    with pytest.raises(InvalidDeclaration) as err:
        load(root, "lab", keys=SopsSettings(age_key=SecretRef(file=other)))
    files = sorted({p.file for p in err.value.problems})
    assert files == ["deploys/app/files/extra.sops.conf", "deploys/web/deploy.py",
                     "inventories/lab.secrets.sops.yaml"], err.value
    assert len(err.value.problems) == 3, err.value  # the parameters are not asked without it
    assert CANARY not in str(err.value)


def test_deploy_file_decrypted_in_memory(tmp_path: Path, age: tuple[str, SopsSettings]) -> None:
    """A deploys/<svc>/files/*.sops.* file is decrypted into the state, the snapshot untouched."""
    recipient, keys = age
    root = _sample(tmp_path, recipient)
    enc = root / "deploys/app/files/extra.sops.conf"
    _write(enc, sops.encrypt({"data": f"key={CANARY}\n"}, [recipient]), "json")
    before = enc.read_bytes()
    state = load(root, "lab", keys=keys)
    content = state.secret_files["deploys/app/files/extra.sops.conf"]
    assert base64.b64decode(content) == f"key={CANARY}\n".encode()
    assert enc.read_bytes() == before
    assert not any(CANARY in p.read_text(errors="replace") for p in root.rglob("*") if p.is_file())


def test_cli_names_the_bad_file_and_exits_2(tmp_path: Path, age: tuple[str, SopsSettings]) -> None:
    """`gitops validate` on a tampered deploy file exits 2, names it, shows no traceback."""
    recipient, keys = age
    root = _sample(tmp_path / "repo", recipient)
    enc = root / "deploys/app/files/extra.sops.conf"
    doc = sops.encrypt({"data": f"key={CANARY}\n"}, [recipient])
    doc["sops"]["mac"] = sops.encrypt({"x": "0" * 128}, [recipient])["x"]
    _write(enc, doc, "json")
    assert keys.age_key is not None and keys.age_key.file is not None
    env = {**os.environ, "GITOPS_SOPS": json.dumps({"age_key": {"file": str(keys.age_key.file)}})}
    proc = subprocess.run([sys.executable, "-m", "gitops", "validate", "--worktree", "--repo",
                           str(root), "--environment", "lab"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2
    assert "deploys/app/files/extra.sops.conf: SOPS: the MAC does not decrypt" in proc.stderr
    assert "Traceback" not in proc.stderr and CANARY not in proc.stderr + proc.stdout


def test_missing_key_file_is_a_usage_error(tmp_path: Path, age: tuple[str, SopsSettings]) -> None:
    """A key file that is not there is a one-line usage error naming it."""
    recipient, _ = age
    root = _sample(tmp_path, recipient)
    missing = SopsSettings(age_key=SecretRef(file=tmp_path / "nope.key"))
    with pytest.raises(Exception, match=r"nope.key: No such file"):
        load(root, "lab", keys=missing)


# -- in the workers' output -----------------------------------------------------------------


def test_redaction_of_results_and_streams(capsys: pytest.CaptureFixture[str]) -> None:
    """A diff showing a secret becomes <secret changed>; other text gets <secret>."""
    from gitops.records import HostPlan, OpPlan, Plan

    diff = ("Will modify /etc/app/config.json\n"
            f'  -  "token": "old-unknown-token"\n  +  "token": "{CANARY}"')
    plan = Plan(hosts=(HostPlan(host="h", error=f"failed: {CANARY}", ops=(
        OpPlan(name="app | App configuration", service="app", would_change=True,
               conditional=False, diff=diff),
        OpPlan(name="app | other", service="app", would_change=True, conditional=False,
               diff="  + plain line")),),))
    out = redact(plan, (CANARY,))
    first, second = out.hosts[0].ops
    assert first.diff == f"Will modify /etc/app/config.json\n  {CHANGED}"
    assert "old-unknown-token" not in out.model_dump_json()
    assert second.diff == "  + plain line"
    assert out.hosts[0].error == f"failed: {HIDDEN}"
    stream = RedactingStream(sys.stdout, (CANARY,))
    stream.write(f"progress: {CANARY}\n")
    assert capsys.readouterr().out == f"progress: {HIDDEN}\n"


def test_pieces_of_a_secret_are_blanked_too() -> None:
    """A secret shortened to its two ends (as pytest shows long values) is blanked."""
    from gitops.workers.secrets import redact_text

    secret = "canary-probe-5f0e9f1cb48bce42dadc3"
    message = "assert 'canary-probe...b48bce42dadc3' == 'ok'"
    assert redact_text(message, (secret,)) == f"assert '{HIDDEN}...{HIDDEN}' == 'ok'"
    assert redact_text("Lab host, managed by gitops", (secret,)) == "Lab host, managed by gitops"


def test_a_diff_back_to_a_short_secret_is_hidden() -> None:
    """Rolling back to a short secret ("ok") hides the diff, whose removed line holds the
    newer secret this revision does not know."""
    diff = "[lab-1] Will modify /etc/gitops-probe\n  @@ -1 +1 @@\n  - canary-rotated-value\n  + ok"
    assert redact_text(diff, ("ok",)) == diff  # too short to blank out of text ...
    from gitops.records import HostPlan, OpPlan, Plan

    plan = Plan(hosts=(HostPlan(host="h", error=None, ops=(OpPlan(
        name="probe | Probe file", service="probe", would_change=True, conditional=False,
        diff=diff),)),))
    hidden = redact(plan, ("ok",)).hosts[0].ops[0].diff  # ... but it hides the diff
    assert hidden == f"[lab-1] Will modify /etc/gitops-probe\n  {CHANGED}"
