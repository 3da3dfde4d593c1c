"""A revision's service folders (``deploys/<service>/``) checked as the loader reads them:
``service.yml``, ``model.py``'s ``Params``, the compiled deploy, checks and remove files, teams.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import itertools
import json
import os
import sys
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ValidationError

from gitops import freetext
from gitops.errors import InvalidDeclaration, Problem
from gitops.model import (
    NAME_RE,
    TEAMS_FILE,
    InventoryFile,
    ServiceMeta,
    TeamsFile,
)
from gitops.pipeline import depends
from gitops.pipeline.yamlfile import Loc, Problems, field_path, read_yaml

__all__ = ["CHECK_ARGUMENTS", "REMOVE_FILE", "SERVICE_FILE", "Requires", "check_requires",
           "check_teams", "removable_services", "service_digests", "service_locs",
           "service_model", "service_requires", "teams"]

CHECK_ARGUMENTS = ("host", "params")
"""What a check function in ``checks.py`` may take (see gitops.workers.verify_checks)."""


SERVICE_FILE = "service.yml"
"""A service's metadata, besides its parameters: ``deploys/<service>/service.yml``."""


class Requires(dict[str, list[str]]):
    """Service -> the services it requires, with where each requirement is written."""

    def __init__(self) -> None:
        super().__init__()
        self.at: dict[tuple[str, str], tuple[str, int, str]] = {}
        """(service, requirement) -> file, line and field of the requirement."""
        self.guards: dict[str, tuple[str, ...]] = {}
        """Service whose ``service.yml`` says ``guard: true`` -> its ``guard_files``."""


def service_requires(root: Path, services: list[str], revision: str | None,
                      problems: Problems) -> Requires:
    """Read and validate each used service's ``service.yml`` (optional); a requirement that
    names no service (no ``deploys/<name>/deploy.py``) is a problem at its line."""
    out = Requires()
    for service in services:
        path = root / "deploys" / service / SERVICE_FILE
        if not (root / "deploys" / service / "deploy.py").is_file() or not path.is_file():
            continue  # a missing deploy.py is reported where the inventory names the service
        rel = f"deploys/{service}/{SERVICE_FILE}"
        try:
            data, lines = read_yaml(path, rel, revision)
        except InvalidDeclaration as exc:
            problems.items.extend(exc.problems)
            continue
        here = Problems(rel, lines)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            here.add((), "should be a mapping (requires: [service, ...])")
        else:
            try:
                meta = ServiceMeta.model_validate_json(json.dumps(data, default=str), strict=True)
            except ValidationError as exc:
                for err in exc.errors(include_url=False, include_input=False):
                    here.add(tuple(err["loc"]), err["msg"].removeprefix("Value error, "))
            else:
                out[service] = []
                if meta.guard:
                    out.guards[service] = tuple(meta.guard_files)
                for i, name in enumerate(meta.requires):
                    loc: Loc = ("requires", i)
                    if name == service:
                        here.add(loc, f"service {service!r} cannot require itself")
                    elif not (root / "deploys" / name / "deploy.py").is_file():
                        here.add(loc, f"unknown service {name!r}: there is no "
                                 f"deploys/{name}/deploy.py")
                    elif name not in out[service]:
                        out[service].append(name)
                        out.at[(service, name)] = (rel, here.at(loc, "").line or 1, field_path(loc))
        problems.items.extend(here.items)
    return out


def teams(root: Path, revision: str | None = None) -> tuple[list[str], list[Problem]]:
    """The teams ``teams.yml`` at the snapshot's root declares (none without the file), and
    its problems (each at its file and line)."""
    path = root / TEAMS_FILE
    if not path.is_file():
        return [], []
    try:
        data, lines = read_yaml(path, TEAMS_FILE, revision)
    except InvalidDeclaration as exc:
        return [], list(exc.problems)
    here = Problems(TEAMS_FILE, lines)
    if not isinstance(data, dict):
        here.add((), "should be a mapping: teams: [name, ...]")
        return [], here.items
    try:
        found = TeamsFile.model_validate_json(json.dumps(data, default=str), strict=True)
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            here.add(tuple(err["loc"]), err["msg"].removeprefix("Value error, "))
        return [], here.items
    for i, name in enumerate(found.teams):
        if name in found.teams[:i]:
            here.add(("teams", i), f"team {name!r} is listed twice")
    return list(dict.fromkeys(found.teams)), here.items


def check_teams(root: Path, inv: InventoryFile, services: list[str], revision: str | None,
                 problems: Problems) -> None:
    """An owning team the inventory names must be declared in ``teams.yml``; a service given
    an owner must be one the inventory uses."""
    named: list[tuple[Loc, str]] = []
    if inv.settings.team is not None:
        named.append((("settings", "team"), inv.settings.team))
    for service, team in inv.settings.service_teams.items():
        loc: Loc = ("settings", "service_teams", service)
        if service not in services:
            problems.add(loc, f"service {service!r} is not used by this inventory")
        named.append((loc, team))
    if not named:
        return
    known, found = teams(root, revision)
    problems.items.extend(p for p in found if p not in problems.items)
    if found:
        return
    for loc, team in named:
        if team not in known:
            hint = (f"declared in {TEAMS_FILE}: {', '.join(known)}" if known
                    else f"there is no {TEAMS_FILE} declaring the teams")
            problems.add(loc, f"unknown team {team!r} ({hint})")


def check_requires(requires: Requires, declared_on: dict[str, set[str]],
                    problems: Problems) -> None:
    """Cycles and requirements a host does not run are problems at the requiring line."""
    for loop in depends.cycles(list(requires), requires):
        path = " -> ".join(loop)
        for service, name in itertools.pairwise(loop):
            file, line, field = requires.at[(service, name)]
            problems.items.append(Problem(file, line, field,
                                          f"dependency cycle: {path}"))
    for service, names in requires.items():
        for name in names:
            missing = sorted(h for h, used in declared_on.items()
                             if service in used and name not in used)
            if missing:
                shown = freetext.some(missing, 3)
                file, line, field = requires.at[(service, name)]
                problems.items.append(Problem(
                    file, line, field,
                    f"{service!r} requires {name!r} on the same host, but {shown} "
                    f"run{'s' if len(missing) == 1 else ''} {service!r} without {name!r}"))


def service_locs(inv: InventoryFile, service: str) -> list[Loc]:
    """Every place the inventory names ``service``."""
    return [(section, name, "services", service)
            for section, specs in (("groups", inv.groups), ("hosts", inv.hosts))
            for name, spec in specs.items() if service in spec.services]


def service_model(root: Path, service: str, inv: InventoryFile,
                   problems: Problems) -> type[BaseModel] | None:
    """Compile the service's files and return its ``Params`` model, or None when it declares
    none (any parameters accepted, with a warning) or has a problem."""
    folder = root / "deploys" / service
    locs = service_locs(inv, service)
    if not (folder / "deploy.py").is_file():
        for loc in locs:
            problems.add(loc, f"service {service!r} has no deploys/{service}/deploy.py")
        return None
    compiled = {name: _compile(folder / name, f"deploys/{service}/{name}", problems)
                for name in ("deploy.py", "checks.py", "model.py") if (folder / name).is_file()}
    if "checks.py" in compiled and compiled["checks.py"] is not None:
        _check_checks(compiled["checks.py"], f"deploys/{service}/checks.py", problems)
    if "checks.py" not in compiled:
        message = (f"service {service!r} has no deploys/{service}/checks.py: a host it is "
                   "applied to is not verified by it (with no other check there: applied, "
                   "not verified)")
        if inv.settings.require_checks:
            problems.add(locs[0], f"{message} (settings.require_checks)")
        else:
            problems.warn(locs[0], message)
    model_file = folder / "model.py"
    if not model_file.is_file():
        message = (f"service {service!r} has no deploys/{service}/model.py: its parameters, "
                   "typos included, are not checked")
        if inv.settings.require_models:
            problems.add(locs[0], f"{message} (settings.require_models)")
        else:
            problems.warn(locs[0], message)
        return None
    if compiled["model.py"] is None:
        return None
    return _import_params(model_file, f"deploys/{service}/model.py", service, problems)


def _compile(path: Path, rel: str, problems: Problems) -> ast.Module | None:
    """Parse and compile a Python file of a service (nothing is run); its syntax tree, or
    None with the problem at its line."""
    try:
        source = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning, DeprecationWarning: not ours to print
            tree = ast.parse(source, filename=rel)
            compile(tree, rel, "exec", dont_inherit=True)
        return tree
    except SyntaxError as exc:
        problems.items.append(Problem(rel, exc.lineno or 1, "", f"syntax error: {exc.msg}"))
    except ValueError:  # a null byte (Python < 3.12)
        problems.items.append(Problem(rel, source[: source.find(b"\0")].count(b"\n") + 1, "",
                                      "syntax error: source code cannot contain null bytes"))
    except (RecursionError, MemoryError):
        problems.items.append(Problem(rel, 1, "", "syntax error: nested too deeply to compile"))
    except OSError as exc:
        problems.items.append(Problem(rel, 1, "", f"cannot read: {exc.strerror}"))
    return None


REMOVE_FILE = "remove.py"
"""How a service is taken off a host: ``deploys/<service>/remove.py`` (see
gitops.pipeline.prune)."""


def removable_services(root: Path, problems: Problems) -> tuple[str, ...]:
    """Compile every ``deploys/<service>/remove.py`` (never running it): a service no host
    declares any more may still be on hosts. The services whose file compiles."""
    folder = root / "deploys"
    found = []
    for path in sorted(folder.glob(f"*/{REMOVE_FILE}")) if folder.is_dir() else []:
        service = path.parent.name
        if not NAME_RE.fullmatch(service) or not path.is_file():
            continue
        if _compile(path, f"deploys/{service}/{REMOVE_FILE}", problems) is not None:
            found.append(service)
    return tuple(found)


def _check_checks(tree: ast.Module, rel: str, problems: Problems) -> None:
    """A checks file defines ``test_*`` functions taking only ``host`` and ``params`` (read
    from the syntax tree: checks.py runs only in the verify worker, never here)."""
    tests = [node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
             and node.name.startswith("test_")]
    if not tests:
        problems.items.append(Problem(rel, 1, "", "no check functions: define "
                                      "test_<name>(host, params) functions"))
    for test in tests:
        if isinstance(test, ast.AsyncFunctionDef):
            problems.items.append(Problem(rel, test.lineno, test.name,
                                          "a check cannot be async"))
        a = test.args
        names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
        names += [f"*{a.vararg.arg}"] if a.vararg else []
        names += [f"**{a.kwarg.arg}"] if a.kwarg else []
        others = [n for n in names if n not in CHECK_ARGUMENTS]
        if others or a.posonlyargs:
            problems.items.append(Problem(
                rel, test.lineno, test.name,
                f"takes {', '.join(others or ['positional-only arguments'])}: a check takes "
                f"only {' and '.join(CHECK_ARGUMENTS)}"))


def _import_params(model_file: Path, rel: str, service: str,
                   problems: Problems) -> type[BaseModel] | None:
    """Import a compiled ``model.py`` (it only declares a pydantic model) and return its
    ``Params`` class with unknown fields forbidden."""
    module_name = f"_gitops_service_model_{service}_{abs(hash(str(model_file)))}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, model_file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec.loader.exec_module(module)
        params = getattr(module, "Params", None)
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            line = _params_line(model_file)
            problems.items.append(Problem(rel, line, "Params",
                                          "should be a pydantic BaseModel class"))
            return None
        if params.model_config.get("extra") != "forbid":
            # Unknown fields are always errors, whatever the service's model says.
            forbid = {**params.model_config, "extra": "forbid"}
            params = type(params.__name__, (params,), {"model_config": forbid})
        return params
    except (Exception, SystemExit) as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if f.filename == str(model_file)]
        line = (frames[-1].lineno or 1) if frames else 1
        problems.items.append(Problem(rel, line, "", f"cannot import: {type(exc).__name__}"))
        return None
    finally:
        sys.modules.pop(module_name, None)


def _params_line(model_file: Path) -> int:
    """The line of ``class Params`` (or ``Params = ...``) in a model file, else 1."""
    for node in ast.parse(model_file.read_bytes()).body:
        if isinstance(node, ast.ClassDef) and node.name == "Params":
            return node.lineno
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "Params" for t in node.targets):
            return node.lineno
    return 1


def service_digests(root: Path, services: list[str]) -> dict[str, str]:
    """Per service: a digest of its folder and of every file outside ``deploys/`` and
    ``inventories/`` (a deploy may read any of those), but hidden top-level folders
    (``.git``, a work tree's ``.venv``) and ``__pycache__`` folders."""
    shared = [p for p in _files(root) if p.relative_to(root).parts[0] not in
              ("deploys", "inventories")]
    base = _tree_digest(shared, root)
    out = {}
    for service in services:
        files = list(_files(root / "deploys" / service))
        out[service] = hashlib.sha256(f"{base}:{_tree_digest(files, root)}".encode()).hexdigest()
    return out


def _tree_digest(files: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(b"link:" + os.readlink(path).encode() if path.is_symlink()
                      else path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _files(folder: Path) -> Iterator[Path]:
    """Files and symbolic links under ``folder``, without following links, skipping hidden
    folders at its top and ``__pycache__`` folders."""
    for top, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"
                   and not (top == str(folder) and d.startswith("."))]
        for name in names:
            yield Path(top, name)
        for d in dirs:
            if os.path.islink(os.path.join(top, d)):
                yield Path(top, d)
