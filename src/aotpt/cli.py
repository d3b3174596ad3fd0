"""What every `python -m aotpt.<cli>` shares: the config folder, one-line errors, W&B defaults."""

from __future__ import annotations

import functools
import logging
import os
import re
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


def user_error(err: BaseException) -> str | None:
    """The one-line message of a user mistake, or None for a bug (which keeps its traceback).

    A mistake is an AotptError anywhere in the exception's chain (a config
    check raised inside an OmegaConf resolver arrives wrapped), or Hydra's own
    complaint about the command line (an unknown key, a parse error, a missing
    config), whose several lines are joined into one.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    seen = err
    while seen is not None:
        if isinstance(seen, AotptError):
            return str(seen).replace("\n", " ")
        seen = seen.__cause__ or seen.__context__
    if isinstance(err, HydraException | OmegaConfBaseException):
        if match := re.match(r"Could not override '([^']+)'", str(err)):
            from aotpt.checks import unknown_key_message

            return unknown_key_message(match.group(1))
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        lines = [line for line in lines if not re.match(r"(full_key|object_type|reference_type)\b", line)]
        override = getattr(err, "override", None)  # OverrideParseException
        return (f"cannot parse {override!r}: " if isinstance(override, str) else "") + "; ".join(lines)
    return None


def entry(hydra_main: Callable, interrupted: str = "interrupted") -> None:
    """Run a `@hydra.main` function: unknown group choices, Hydra's errors and AotptErrors become one line.

    HYDRA_FULL_ERROR makes Hydra re-raise instead of printing its own
    multi-line report, so every failure arrives here: a user mistake prints
    `error: ...` and exits 2, Ctrl-C prints `interrupted` and exits 130,
    anything else is a bug and keeps its traceback.
    """
    one_line_errors(check_overrides)(sys.argv[1:])
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        hydra_main()
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        message = user_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
