"""Where settings come from besides the environment: secret files and the one env file.

Kept apart from `settings.py` (the fields and their checks); `oaksend.worker.settings`
imports what it needs.
"""

from __future__ import annotations

import os

from oaksend.errors import ConfigError

__all__ = ["ENV_FILE_VAR", "env_file", "env_file_values", "read_secret"]


def read_secret(path: str, name: str) -> str:
    """A secret file's content without its trailing newline; the error names the setting, never the content."""
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}: cannot read {path!r} ({type(exc).__name__})") from None
    if not value:
        raise ValueError(f"{name}: {path!r} is empty")
    return value


#: The environment variable naming the one env file oaksend reads (none by default).
ENV_FILE_VAR = "OAKSEND_ENV_FILE"


def env_file() -> str | None:
    """The env file to read (`OAKSEND_ENV_FILE`), or None; a named file that is missing is a ConfigError."""
    path = os.environ.get(ENV_FILE_VAR, "").strip() or None
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"{ENV_FILE_VAR}: {path!r} is not a file")
    return path


def env_file_values() -> dict[str, str | None]:
    """The variables of the env file (`OAKSEND_ENV_FILE`), for `oaksend run` to pass to its children."""
    from dotenv import dotenv_values

    path = env_file()
    return dict(dotenv_values(path, encoding="utf-8")) if path else {}
