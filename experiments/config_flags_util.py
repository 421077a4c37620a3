"""``--config=NAME[:ARG]`` → ``experiments/configs/NAME.py[:ARG]`` for ml_collections' config flags."""

from __future__ import annotations

import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"


def resolve_config_argv(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        if arg.startswith("--config=") and not arg.startswith("--config."):
            value = arg.split("=", 1)[1]
            name, sep, variant = value.partition(":")
            if not name.endswith(".py"):
                path = CONFIG_DIR / f"{name}.py"
                if not path.exists():
                    available = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "common"))
                    sys.exit(f"unknown config {name!r}; available: {', '.join(available)}")
                value = f"{path}{sep}{variant}"
            arg = f"--config={value}"
        out.append(arg)
    return out
