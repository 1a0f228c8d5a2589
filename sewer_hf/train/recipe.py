"""The command-line shell shared by the launchable recipes in `recipes/`."""
from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any, Callable

from sewer_hf.config import config_from_argv
from sewer_hf.errors import SewerHFError


def config_help(cls: type, doc: str = "") -> str:
    hints = typing.get_type_hints(cls)
    lines = [doc.strip(), "", "options (YAML keys or --key value):"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        type_name = str(hints[f.name]).replace("typing.", "").replace("<class '", "").replace("'>", "")
        lines.append(f"  --{f.name:<28} {type_name:<22} default: {default!r}")
    return "\n".join(lines)


def run_recipe(cls: type, train: Callable[[Any], Any], argv: list[str], doc: str = "") -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(config_help(cls, doc))
        return 0
    try:
        cfg = config_from_argv(cls, argv)
        train(cfg)
    except SewerHFError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
