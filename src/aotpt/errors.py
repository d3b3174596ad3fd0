"""One error type for every mistake a user can make.

The CLIs catch `AotptError` and print its message as a single line (no
traceback), so every message must name the file, field or option that is
wrong and what would be accepted.
"""


class AotptError(Exception):
    """A user-facing error: bad config, bad data, unreachable resource."""


class ConfigError(AotptError, ValueError):
    """An option, or a combination of options, that cannot work."""


class DataError(AotptError, ValueError):
    """A data file that is missing, malformed or holds values outside the task's schema."""


def choices(name: str, value: object, accepted) -> ConfigError:
    """`unknown task='foo'; accepted: a, b, c` — the standard unknown-option error."""
    return ConfigError(f"unknown {name}={value!r}; accepted: {', '.join(sorted(accepted))}")


def unreadable(path, what: str, err: BaseException, hint: str = "") -> DataError:
    """`<path>: truncated or corrupt <what> (<reason>)` — for a file whose bytes cannot be parsed."""
    reason = (str(err).splitlines() or [""])[0][:160]
    message = f"{path}: truncated or corrupt {what} ({type(err).__name__}: {reason})"
    return DataError(f"{message}; {hint}" if hint else message)
