"""The bundle's ``scripts/`` package: covidseg code that runs inside the bundle, without covidseg installed.

The post-processing of ``covidseg predict`` (``covidseg.infer.postprocess`` with ``masks``, ``lungmask``, ``body``,
numpy and scipy only) and the bundle's own transforms (``covidseg.bundle.bundle_scripts``) are copied as they
are, with every ``from covidseg... import`` line rewritten into a relative import of the shipped copy. The
bundle therefore runs the very code ``covidseg predict`` runs, not a second implementation. A module that
imports anything else from covidseg cannot be shipped and stops the export.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from covidseg.errors import ConfigError

__all__ = ["SCRIPTS_DIR", "SHIPPED_MODULES", "rewrite_imports", "shipped_sources", "write_scripts"]

SCRIPTS_DIR = "scripts"
"""Folder (a Python package) of the bundle that holds the shipped code."""
SHIPPED_MODULES: dict[str, str] = {
    "__init__": "covidseg.bundle.bundle_scripts",
    "errors": "covidseg.errors",
    "masks": "covidseg.infer.masks",
    "lungmask": "covidseg.infer.lungmask",
    "body": "covidseg.infer.body",
    "postprocess": "covidseg.infer.postprocess",
    "transforms": "covidseg.bundle.bundle_scripts.transforms",
    "inference": "covidseg.bundle.bundle_scripts.inference",
}
"""Shipped module name (``scripts/<name>.py``) -> the covidseg module it is a copy of."""

_FROM_IMPORT = re.compile(r"^(?P<indent>[ \t]*)from[ \t]+(?P<module>covidseg(?:\.\w+)*)[ \t]+import\b", re.MULTILINE)
_ANY_IMPORT = re.compile(r"^[ \t]*(?:from|import)[ \t]+covidseg\b", re.MULTILINE)
_HEADER = "# Shipped by covidseg {version} from {module}; imports rewritten to the bundle's scripts package.\n"


def rewrite_imports(source: str, module: str = "<source>") -> str:
    """Rewrite ``from covidseg.X.name import ...`` into ``from .name import ...`` for shipped modules.

    Args:
        source: Python source of a module to ship.
        module: Its name, for the error message.

    Raises:
        ConfigError: The module imports covidseg code that is not shipped (the bundle could not run it).

    Examples:
        >>> rewrite_imports("from covidseg.infer.masks import fill_holes")
        'from .masks import fill_holes'
        >>> rewrite_imports("from covidseg.io import load_ct", "m")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        covidseg.errors.ConfigError: m imports covidseg.io, which is not shipped in the bundle; ...
    """
    by_module = {target: name for name, target in SHIPPED_MODULES.items() if name != "__init__"}

    def replace(match: re.Match[str]) -> str:
        name = by_module.get(match["module"])
        if name is None:
            raise ConfigError(
                f"{module} imports {match['module']}, which is not shipped in the bundle; ship it in "
                "covidseg.bundle.shipping.SHIPPED_MODULES or remove the import"
            )
        return f"{match['indent']}from .{name} import"

    rewritten = _FROM_IMPORT.sub(replace, source)
    leftover = _ANY_IMPORT.search(rewritten)
    if leftover is not None:
        raise ConfigError(f"{module} still imports covidseg ({leftover.group(0).strip()!r}); use 'from ... import'")
    return rewritten


def _module_file(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ConfigError(f"cannot find the source of {module}; reinstall covidseg")
    return Path(spec.origin)


def shipped_sources() -> dict[str, str]:
    """The source text of every shipped module, imports rewritten, keyed by file name in ``scripts/``.

    Examples:
        >>> sources = shipped_sources()
        >>> sorted(sources)[:3], "from .postprocess import" in sources["transforms.py"]
        (['__init__.py', 'body.py', 'errors.py'], True)
    """
    from covidseg import __version__

    out: dict[str, str] = {}
    for name, module in SHIPPED_MODULES.items():
        text = _module_file(module).read_text(encoding="utf-8")
        out[f"{name}.py"] = _HEADER.format(version=__version__, module=module) + rewrite_imports(text, module)
    return out


def write_scripts(bundle_dir: str | Path) -> list[Path]:
    """Write the ``scripts/`` package into a bundle folder; return the files written.

    Examples:
        >>> import tempfile
        >>> files = write_scripts(tempfile.mkdtemp())
        >>> sorted(f.name for f in files)[-2:]
        ['postprocess.py', 'transforms.py']
    """
    folder = Path(bundle_dir) / SCRIPTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in shipped_sources().items():
        path = folder / filename
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
