"""The book's environment switches, parsed strictly, without importing torch (so that
file handling such as :mod:`utils.sources` starts in a fraction of a second)."""

from __future__ import annotations

import os

#: Set this environment variable to ``1`` to run every notebook in its *smoke* profile.
SMOKE_ENV = "GDL_SMOKE"

#: The values an on/off switch accepts (case-insensitive; unset or empty means off).
FLAG_VALUES = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
    "": False,
}


def env_flag(name: str) -> bool:
    """An on/off environment switch, parsed strictly: a mistyped value is an error,
    never "off".

    A typo such as ``GDL_SMOKE=ture`` would otherwise run the full profile (and
    overwrite the committed results) without a word.
    """
    value = os.environ.get(name, "")
    try:
        return FLAG_VALUES[value.strip().lower()]
    except KeyError:
        raise ValueError(
            f"{name}={value!r} is not a valid switch value; use 1, true, yes or on to "
            "turn it on, and 0, false, no, off or leave it unset to turn it off"
        ) from None


def is_smoke() -> bool:
    """True when the smoke profile is on (tiny data, a few steps, the same code
    path)."""
    return env_flag(SMOKE_ENV)


def profile_name() -> str:
    """``"smoke"`` or ``"full"``: the profile this process runs."""
    return "smoke" if is_smoke() else "full"
