"""The configuration reference, generated from the config classes and registries so that it cannot go stale.

Every key of a ``covidseg train`` config (:class:`~covidseg.config.sections.RunConfig`), of a ``covidseg
pretrain`` config (:class:`~covidseg.config.pretrain.PretrainConfig`) and of the ``augment`` section
(:class:`~covidseg.data.augment.AugmentConfig`) is listed with its type, default and meaning, and so are the
keyword arguments of every registry entry a config can name: dataset layouts (``data.options``), penalties
(``regularization``), λ schedules (``regularization.schedule``) and fine-tuning strategies (``strategy``).

Meanings are read from the code, never typed in twice: a pydantic ``Field(description=...)``, else the attribute
docstring under the field, else the ``Attributes:`` / ``Args:`` entry of the class docstring (classes that a
section converts into, e.g. :class:`~covidseg.model.unet.UNetConfig`, and base classes included), else the
comment of the key in the YAML example of the module docstring. Regenerate the committed page with::

    python -m covidseg.config.reference > docs/config-reference.md

Examples:
    >>> text = config_reference_markdown()
    >>> "| `train.epochs` | int ≥ 1 | `30` | Maximum epochs. |" in text
    True
    >>> parse_google_section('''Summary.
    ...
    ... Args:
    ...     a: First line
    ...         continued.
    ...     b: Second.
    ... ''', "Args")
    {'a': 'First line continued.', 'b': 'Second.'}
"""

from __future__ import annotations

import ast
import functools
import inspect
import itertools
import json
import re
import sys
import textwrap
import types
import typing
from collections import abc
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from pathlib import PurePath
from types import ModuleType
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

__all__ = [
    "REGENERATE_COMMAND",
    "ConfigKey",
    "config_keys",
    "config_reference_markdown",
    "field_meanings",
    "parse_google_section",
]

REGENERATE_COMMAND = "python -m covidseg.config.reference > docs/config-reference.md"
"""The command that rewrites the committed reference page."""
UNDOCUMENTED = "(undocumented)"
"""Meaning shown for a key whose class documents nothing about it."""
_SECTION_HEADERS = ("Args", "Arguments", "Attributes", "Returns", "Raises", "Examples", "Yields", "Note", "Notes")
_CONSTRAINTS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "min. length"))


class ConfigKey(typing.NamedTuple):
    """One documented key: dotted name, type, default (as shown) and meaning."""

    key: str
    type: str
    default: str
    meaning: str


def parse_google_section(doc: str | None, section: str) -> dict[str, str]:
    """The ``name: text`` entries of one section (``Args`` or ``Attributes``) of a Google-style docstring.

    Continuation lines are joined with single spaces; other sections end the section.
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    entries: dict[str, str] = {}
    inside, indent, current = False, 0, ""
    for line in lines:
        stripped = line.strip()
        if not inside:
            inside = stripped == f"{section}:"
            continue
        if not stripped:
            continue
        width = len(line) - len(line.lstrip())
        if width == 0 and stripped.rstrip(":") in _SECTION_HEADERS:
            break
        indent = indent or width
        match = re.match(r"^(\*{0,2}\w+)(?:\s*\([^)]*\))?:\s*(.*)$", stripped)
        if width == indent and match:
            current = match.group(1)
            entries[current] = match.group(2)
        elif width > indent and current:
            entries[current] = f"{entries[current]} {stripped}".strip()
        elif width < indent:
            break
    return entries


@functools.cache
def _attribute_docstrings(cls: type) -> dict[str, str]:
    """Docstrings written under annotated class attributes (``x: int = 1`` then ``\"\"\"Meaning.\"\"\"``).

    Only covidseg's own classes are read (not torch's or pydantic's base classes).
    """
    if not cls.__module__.startswith("covidseg."):
        return {}
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # pragma: no cover - classes defined without source
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _yaml_comments(module: ModuleType | None) -> dict[str, str]:
    """Comments of the top-level keys in the YAML example of a module docstring (``key: value  # meaning``)."""
    comments: dict[str, str] = {}
    for line in inspect.cleandoc((module.__doc__ if module else None) or "").splitlines():
        match = re.match(r"^ {4}(\w+):[^#]*#\s*(.+)$", line)
        if match:
            comments.setdefault(match.group(1), match.group(2).strip())
    return comments


def _delegates(cls: type) -> list[type]:
    """Classes a config section converts into (the return types of its ``to_*`` / ``*_config`` methods)."""
    found: list[type] = []
    for name, member in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("to_") or name.endswith("_config"):
            try:
                target = typing.get_type_hints(member).get("return")
            except (NameError, TypeError):  # pragma: no cover - unresolvable annotations
                continue
            if isinstance(target, type) and target is not cls and not issubclass(target, (dict, list, str)):
                found.append(target)
    return found


def field_meanings(cls: type, *, yaml_module: ModuleType | None = None) -> dict[str, str]:
    """Meaning of each field of ``cls`` from the code's own documentation (see the module docstring).

    Examples:
        >>> from covidseg.config.sections import ModelSection
        >>> field_meanings(ModelSection)["head_kernel_size"]
        'Kernel of the final conv to the class logits, 1 or 3.'
    """
    sources: list[dict[str, str]] = []
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        sources.append({k: f.description for k, f in cls.model_fields.items() if f.description})
    for klass in [*inspect.getmro(cls), *_delegates(cls)]:
        if not klass.__module__.startswith("covidseg."):
            continue
        sources.append(_attribute_docstrings(klass))
        sources.append(parse_google_section(klass.__doc__, "Attributes"))
        sources.append(parse_google_section(klass.__doc__, "Args"))
        init = klass.__dict__.get("__init__")
        if init is not None:
            sources.append(parse_google_section(init.__doc__, "Args"))
    if yaml_module is not None:
        sources.append(_yaml_comments(yaml_module))
    meanings: dict[str, str] = {}
    for source in sources:
        for key, text in source.items():
            if text and key not in meanings:
                meanings[key] = text
    return meanings


def _type_text(annotation: Any) -> str:
    """A short, YAML-oriented name of a type annotation."""
    if annotation is None or annotation is type(None):
        return "null"
    if isinstance(annotation, str):
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(dict.fromkeys(_type_text(a) for a in args))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list[{_type_text(args[0])}]"
        return "[" + ", ".join(_type_text(a) for a in args) + "]"
    if origin in (list, abc.Sequence):
        return f"list[{_type_text(args[0])}]" if args else "list"
    if origin in (dict, abc.Mapping):
        return "mapping"
    if isinstance(annotation, type):
        if issubclass(annotation, PurePath):
            return "path"
        if issubclass(annotation, BaseModel):
            return "section"
        return annotation.__name__
    if annotation is Any:
        return "any"
    return str(annotation).replace("typing.", "")


def _constraint_text(info: FieldInfo) -> str:
    parts = []
    for item in info.metadata:
        for attr, symbol in _CONSTRAINTS:
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return ", ".join(parts)


def _plain(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return ".inf" if value > 0 else "-.inf"
    return value


def _value_text(value: Any) -> str:
    """A default as it would be written in YAML (``null``, ``true``, ``[384, 384]``)."""
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(_plain(value), ensure_ascii=False)}`"


def _field_default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        return _value_text(info.default_factory())  # type: ignore[call-arg]
    return _value_text(info.default)


def _markdown(text: str) -> str:
    """Docstring reStructuredText to Markdown: ``x`` -> `x`, :class:`~a.B` -> `B`; one line."""
    text = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", str(text))
    return " ".join(text.replace("``", "`").split())


def _cell(text: str) -> str:
    return _markdown(text).replace("|", "\\|")


def _prose(doc: str | None) -> str:
    """A docstring's paragraphs before its first Google section or literal block, as Markdown."""
    kept: list[str] = []
    for line in inspect.cleandoc(doc or "").splitlines():
        if line.rstrip(":").strip() in _SECTION_HEADERS or line.rstrip().endswith("::"):
            break
        kept.append(line)
    paragraphs = "\n".join(kept).strip().split("\n\n")
    return "\n\n".join(_markdown(p) for p in paragraphs if p.strip())


def _fallback_meaning(key: str, meanings: Mapping[str, str], prose: str) -> str:
    """For a key its class does not describe: point at the key or text that mentions it, else say so."""
    mention = re.compile(rf"``{re.escape(key)}``|`{re.escape(key)}`")
    for other, text in meanings.items():
        if other != key and mention.search(text):
            return f"See `{other}`."
    return "See the text above." if mention.search(prose) else UNDOCUMENTED


def config_keys(
    model: type[BaseModel],
    prefix: str = "",
    *,
    yaml_module: ModuleType | None = None,
    types_override: Mapping[str, str] | None = None,
) -> list[ConfigKey]:
    """The keys of one pydantic config class (not recursing into sub-sections).

    Examples:
        >>> from covidseg.config.sections import OutputSection
        >>> config_keys(OutputSection, "output.")[0]
        ConfigKey(key='output.root', type='path', default='`"runs"`', meaning='Folder of all runs.')
    """
    meanings = field_meanings(model, yaml_module=yaml_module)
    prose = inspect.cleandoc(model.__doc__ or "")
    keys = []
    for name, info in model.model_fields.items():
        constraint = _constraint_text(info)
        type_text = (types_override or {}).get(name) or _type_text(info.annotation)
        type_text += f" {constraint}" if constraint else ""
        meaning = meanings.get(name) or _fallback_meaning(name, meanings, prose)
        keys.append(ConfigKey(prefix + name, type_text, _field_default(info), meaning))
    return keys


def _key_table(keys: Iterable[ConfigKey]) -> list[str]:
    """A Markdown table of keys; without a meaning column when no key has one."""
    rows = list(keys)
    if any(k.meaning for k in rows):
        lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        lines += [f"| `{k.key}` | {_cell(k.type)} | {_cell(k.default)} | {_cell(k.meaning)} |" for k in rows]
    else:
        lines = ["| key | type | default |", "| --- | --- | --- |"]
        lines += [f"| `{k.key}` | {_cell(k.type)} | {_cell(k.default)} |" for k in rows]
    return [*lines, ""]


def _first_paragraph(doc: str | None) -> str:
    return " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())


def _signature_keys(
    func: Callable[..., Any], owners: Iterable[type], prefix: str, skip: Iterable[str] = ()
) -> list[ConfigKey]:
    """Keyword arguments of ``func`` (a class or function) as config keys, meanings from the owners' docs."""
    meanings: dict[str, str] = {}
    for owner in owners:
        for key, text in field_meanings(owner).items():
            meanings.setdefault(key, text)
    for key, text in parse_google_section(getattr(func, "__doc__", None), "Args").items():
        meanings.setdefault(key, text)
    try:
        target = (
            next(c.__dict__["__init__"] for c in func.__mro__ if "__init__" in c.__dict__)
            if isinstance(func, type)
            else func
        )
        hints = typing.get_type_hints(target)
    except (NameError, TypeError):  # pragma: no cover - unresolvable annotations
        hints = {}
    keys = []
    for name, param in inspect.signature(func).parameters.items():
        if name in ("self", *skip) or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        if param.kind is param.POSITIONAL_OR_KEYWORD and name == "root":
            continue
        default = "required" if param.default is param.empty else _value_text(param.default)
        keys.append(ConfigKey(prefix + name, _type_text(hints.get(name, "any")), default, meanings.get(name, "")))
    return keys


def _registry_section(
    title: str, intro: str, registry: Mapping[str, Any], prefix: str, skip: Iterable[str]
) -> list[str]:
    lines = [title, "", intro, ""]
    for name, entry in registry.items():
        owner = entry if isinstance(entry, type) else typing.get_type_hints(entry).get("return")
        owners = [c for c in inspect.getmro(owner)[:-1]] if isinstance(owner, type) else []
        summary = _first_paragraph(entry.__doc__ if entry.__doc__ else (owner.__doc__ if owners else ""))
        keys = _signature_keys(entry, owners, prefix, skip)
        lines += [f"**`{name}`**: {summary}", ""]
        lines += _key_table(keys) if keys else ["No parameters.", ""]
    return lines


def _run_config_lines() -> list[str]:
    from covidseg.config import sections
    from covidseg.data.augment import AugmentConfig
    from covidseg.transfer.penalties import PENALTIES
    from covidseg.transfer.strategies import STRATEGIES

    names = {
        "regularization": {"name": " | ".join(f'"{n}"' for n in ("none", *PENALTIES))},
        "strategy": {"name": " | ".join(f'"{n}"' for n in STRATEGIES)},
    }

    lines = ["## Training runs (`covidseg train`, `covidseg sweep`)", "", _first_paragraph(sections.__doc__), ""]
    for name, info in sections.RunConfig.model_fields.items():
        annotation = info.annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if name == "augment":
            model = AugmentConfig
        if model is None:  # pragma: no cover - every RunConfig field is a section today
            lines += _key_table([ConfigKey(name, _type_text(annotation), _field_default(info), UNDOCUMENTED)])
            continue
        lines += [f"### `{name}`", "", _prose(model.__doc__), ""]
        lines += _key_table(config_keys(model, f"{name}.", types_override=names.get(name)))
    return lines


def _pretrain_lines() -> list[str]:
    from covidseg.config import pretrain
    from covidseg.config.sections import RunConfig

    lines = ["## Source pre-training (`covidseg pretrain`)", "", _first_paragraph(pretrain.__doc__), ""]
    shared = [n for n in pretrain.PretrainConfig.model_fields if n in RunConfig.model_fields and n != "model"]
    top = [k for k in config_keys(pretrain.PretrainConfig, yaml_module=pretrain) if k.key not in shared]
    lines += _key_table(top)
    lines += [f"The sections {', '.join(f'`{n}`' for n in shared)} are those of a training run (above).", ""]
    for title, model, prefix in (
        ("`tasks[]` (one entry per task)", pretrain.TaskSection, "tasks[]."),
        ("`init`", pretrain.InitSection, "init."),
        ("`model`", pretrain.PretrainModelSection, "model."),
    ):
        lines += [f"### {title}", "", _prose(model.__doc__), ""]
        lines += _key_table(config_keys(model, prefix))
    return lines


def config_reference_markdown() -> str:
    """The whole configuration reference as Markdown (the content of ``docs/config-reference.md``)."""
    from covidseg.data.layouts import LAYOUTS
    from covidseg.transfer.penalties import PENALTIES
    from covidseg.transfer.schedules import SCHEDULES
    from covidseg.transfer.strategies import STRATEGIES

    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated by covidseg.config.reference; do not edit. Regenerate: {REGENERATE_COMMAND} -->",
        "",
        "Every key, its type, default and meaning, read from the config classes and registries. Types are YAML",
        "types (`path` is a string naming a file or folder, relative to the working directory; `[float, float]`",
        "a two-element list); `required` keys have no default. Unknown keys and invalid values are one-line errors",
        "when the config is loaded.",
        "",
        *_run_config_lines(),
        "## `data.options` per layout",
        "",
        "`data.options` holds the keyword options of the layout named by `data.layout`; other keys are errors.",
        "",
    ]
    for name, layout in LAYOUTS.items():
        keys = _signature_keys(layout.discover, [], "data.options.", skip=("root",))
        lines += [f"**`{name}`**: {_cell(layout.summary)}.", ""]
        lines += _key_table(keys) if keys else ["No options.", ""]
    lines += _registry_section(
        "## Penalties (`regularization`)",
        "`regularization.name` picks one; its parameters sit beside `name` in the same section "
        "(`name: none` adds no penalty and takes none). The Fisher penalties' `fisher` comes from "
        "`regularization.fisher_path` or is estimated before training.",
        PENALTIES,
        "regularization.",
        skip=("model", "source_state", "layer_of", "fisher"),
    )
    lines += _registry_section(
        "## λ schedules (`regularization.schedule`)",
        "`schedule` is a number (the same λ for every layer), a list (one λ per encoder layer) or a mapping "
        "`{name: ..., <parameters>}` naming one of these:",
        SCHEDULES,
        "schedule.",
        skip=(),
    )
    lines += _registry_section(
        "## Fine-tuning strategies (`strategy`)",
        "`strategy.name` picks one; its parameters sit beside `name`.",
        STRATEGIES,
        "strategy.",
        skip=("partition",),
    )
    lines += _pretrain_lines()
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the reference (``python -m covidseg.config.reference > docs/config-reference.md``)."""
    if argv if argv is not None else sys.argv[1:]:
        sys.stderr.write(f"usage: {REGENERATE_COMMAND}\n")
        return 2
    sys.stdout.write(config_reference_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
