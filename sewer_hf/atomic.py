"""Files written whole or not at all: a killed run never leaves a half-written marker or report."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomically(obj: Any, final: str | Path, indent: int | None = 1) -> None:
    """`obj` as JSON at `final`, through a temporary file in the same folder and one rename."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=indent, default=str))
    os.replace(tmp, final)
