"""MkDocs hook: the settings and inventory reference, rendered from the pydantic models at
build time (``gitops.settings.Settings``, ``gitops.model.InventoryFile`` and ``ServiceMeta``),
so the pages cannot drift from the code; and every subcommand of ``gitops.cli.main`` loaded
before mkdocs-click documents it (some are loaded lazily, on first use).

A page asks for a table with a line ``<!-- reference: module:Model -->``; each model and each
model nested in it gets a section: field, type, default, description (the field's attribute
docstring, else its ``description``)."""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
import types
import typing
from typing import Any

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

__all__ = ["HTML_TAGS", "on_config", "on_page_content", "on_page_markdown", "render"]

MARKER = re.compile(r"^<!-- reference: (?P<module>[\w.]+):(?P<model>\w+) -->$", re.MULTILINE)

DYNAMIC_DEFAULTS = {
    "_default_state_dir()": "`/var/lib/gitops` as root, else `$XDG_STATE_HOME/gitops` "
                            "(`~/.local/state/gitops`)",
}
"""Defaults computed when the settings are read: what they are, in words."""


def on_config(config: Any) -> Any:
    """Load every subcommand of ``gitops.cli.main`` (mkdocs-click lists a group's loaded
    commands when it has any, so one loaded lazily would be left out)."""
    from gitops.cli import main

    def load(group: click.Group, ctx: click.Context) -> None:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if isinstance(command, click.Group):
                load(command, click.Context(command, parent=ctx, info_name=name))

    load(main, click.Context(main, info_name="gitops"))
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Each reference marker of the page replaced by its generated sections."""
    def replace(match: re.Match[str]) -> str:
        module = __import__(match["module"], fromlist=[match["model"]])
        return render(getattr(module, match["model"]))

    return MARKER.sub(replace, markdown)


HTML_TAGS = frozenset({
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd", "del",
    "details", "div", "dl", "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5",
    "h6", "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp",
    "small", "span", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th",
    "thead", "tr", "u", "ul", "var"})
"""The elements Markdown makes; any other bare ``<word>`` in a page is a placeholder of a
command's help text (``inventories/<NAME>.yml``), which mkdocs-click passes on as HTML."""

_BARE_TAG = re.compile(r"</?([A-Za-z][\w-]*)>")


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """Placeholders of the commands' help shown as text, not swallowed as unknown elements;
    an option without a default has an empty Default cell (click 8.3 and later say so with a
    sentinel, which mkdocs-click would print as ``Sentinel.UNSET``)."""
    def escape(match: re.Match[str]) -> str:
        if match[1].lower() in HTML_TAGS:
            return match[0]
        return match[0].replace("<", "&lt;").replace(">", "&gt;")

    html = _BARE_TAG.sub(escape, html)
    return html.replace("<td><code>Sentinel.UNSET</code></td>", "<td></td>")


def render(root: type[BaseModel]) -> str:
    """The sections of ``root`` and of every model nested in it, in the order first met."""
    seen: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for field in model.model_fields.values():
            for nested in _models_in(field.annotation):
                visit(nested)

    visit(root)
    return "\n".join(_section(model, seen) for model in seen)


def _section(model: type[BaseModel], documented: list[type[BaseModel]]) -> str:
    docs, defaults = _attribute_docs(model)
    doc = inspect.cleandoc(model.__doc__ or "")
    if doc.startswith(("Usage docs:", "A base class")):  # inherited from pydantic
        doc = ""
    lines = [f"## `{model.__name__}` {{#{_anchor(model)}}}", ""]
    if doc:
        lines += [_cell(doc), ""]
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        key = field.alias or name
        description = docs.get(name) or field.description or ""
        lines.append(f"| `{key}` | {_type(field.annotation, field, documented)} | "
                     f"{_default(field, defaults.get(name))} | {_cell(description)} |")
    return "\n".join(lines) + "\n"


def _attribute_docs(model: type[BaseModel]) -> tuple[dict[str, str], dict[str, str]]:
    """The docstring written under each field of ``model`` (and of its bases), and the
    source text of each field's default."""
    docs: dict[str, str] = {}
    defaults: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0]
        assert isinstance(body, ast.ClassDef)
        statements = body.body
        for i, stmt in enumerate(statements):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            name = stmt.target.id
            if stmt.value is not None:
                defaults[name] = ast.get_source_segment(source, stmt.value) or ""
            following = statements[i + 1] if i + 1 < len(statements) else None
            if (isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                    and isinstance(following.value.value, str)):
                docs[name] = inspect.cleandoc(following.value.value)
    return docs, defaults


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _type(annotation: Any, field: FieldInfo | None, documented: list[type[BaseModel]]) -> str:
    text = _type_text(annotation, documented)
    limits = _limits(field.metadata) if field is not None else ""
    return f"{text} ({limits})" if limits else text


def _type_text(annotation: Any, documented: list[type[BaseModel]]) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        inner = _type_text(args[0], documented)
        limits = _limits(args[1:])
        return f"{inner} ({limits})" if limits else inner
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(a, documented) for a in args)
    if origin is typing.Literal:
        return " or ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in args)
    if origin in (list, tuple, set, frozenset):
        return f"list of {_type_text(args[0], documented)}" if args else "list"
    if origin is dict:
        return (f"mapping of {_type_text(args[0], documented)} to "
                f"{_type_text(args[1], documented)}")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in documented:
            return f"[`{annotation.__name__}`](#{_anchor(annotation)})"
        return f"`{annotation.__name__}`"
    if annotation is typing.Any:
        return "any"
    return f"`{getattr(annotation, '__name__', str(annotation))}`"


def _limits(metadata: Any) -> str:
    out = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            out.append(_limits(item.metadata))
            continue
        check = getattr(item, "func", None)
        name = getattr(check, "__name__", "<lambda>")
        if check is not None and not name.startswith(("_", "<")):
            out.append(f"checked by `{name}`")
        for attr, word in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None:
                out.append(f"{word} {value}")
        for attr, word in (("min_length", "at least"), ("max_length", "at most")):
            value = getattr(item, attr, None)
            if value is not None:
                out.append(f"{word} {value} long")
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            out.append(f"matching `{pattern}`".replace("|", "\\|"))
    return ", ".join(dict.fromkeys(o for o in out if o))


def _default(field: FieldInfo, source: str | None) -> str:
    if field.is_required():
        return "required"
    if source in DYNAMIC_DEFAULTS:
        return DYNAMIC_DEFAULTS[source]
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return ""
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(its own defaults)"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`".replace("|", "\\|")


def _anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    """``text`` as one table cell: one line, pipes escaped, reStructuredText's double
    backquotes as Markdown's code."""
    return _one_line(text).replace("``", "`").replace("|", "\\|")
