"""The book's environment switches, parsed strictly, without importing torch (so that
file handling such as :mod:`utils.sources` starts in a fraction of a second)."""

from __future__ import annotations

import os

#: Set this environment variable to ``1`` to run every notebook in its *smoke* profile.
SMOKE_ENV = "GDL_SMOKE"
#: Set this one to ``1`` for a chapter's *short* run: fewer steps than its full profile,
#: for a machine where the full run would take too long (``utils.budget``).
SHORT_ENV = "GDL_SHORT"
#: Set this one to ``avx2`` to record a full run as one on an AVX2 CPU
#: (``utils.results``; ``python -m utils.notebooks --avx2`` sets it).
RECORD_AS_ENV = "GDL_RECORD_AS"

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


def is_short() -> bool:
    """True when a short run is asked for (``GDL_SHORT=1``): a chapter that offers one
    runs its ``short`` settings, any other its full profile. Asking for both the smoke
    profile and a short run is an error, not a silent choice."""
    short = env_flag(SHORT_ENV)
    if short and is_smoke():
        raise ValueError(
            f"{SMOKE_ENV} and {SHORT_ENV} are both on: set one of them (smoke: a few "
            "steps, for tests; short: a shorter run with a measured result)"
        )
    return short


def profile_name() -> str:
    """``"smoke"`` or ``"full"``: the profile this process runs (a short run is the
    full profile with some settings lowered: see :func:`is_short`)."""
    is_short()  # both switches on is an error
    return "smoke" if is_smoke() else "full"
