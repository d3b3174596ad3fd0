"""What every `python -m aotpt.<cli>` shares: the config folder, one-line errors, W&B defaults."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from aotpt.errors import AotptError

# conf/ sits at the repository root, beside src/ (an editable install: `make install`).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("model", "task", "method", "reparam", "trainer", "logger", "callbacks", "experiment", "debug")

log = logging.getLogger("aotpt")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_overrides(argv: list[str]) -> None:
    """Refuse an unknown group option (`task=foo`) in one line, before Hydra prints its page of help."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in GROUPS or value in ("null", "") or "," in value or "(" in value:
            continue  # not a group choice, or a multirun sweep (checked by Hydra per job)
        options = group_options(key)
        if value not in options:
            raise AotptError(f"unknown {key}={value!r}; accepted: {', '.join(options)} (files in {CONF_DIR / key})")


def one_line_errors(fn: Callable) -> Callable:
    """Print an `AotptError` as `error: <message>` and exit 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AotptError as err:
            print(f"error: {err}".replace("\n", " "), file=sys.stderr)
            sys.exit(2)

    return wrapper


def entry(hydra_main: Callable) -> None:
    """Run a `@hydra.main` function after checking the command line's group choices."""
    one_line_errors(check_overrides)(sys.argv[1:])
    hydra_main()
