"""Memory sizes as people write them ("24GiB", "80GB", 25769803776) and as the plan prints them."""

from __future__ import annotations

import re

from draft_core.errors import ConfigError

UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
#: the memory of common accelerator cards, smallest first (what "the smallest card it fits" means).
CARDS_GIB = (24, 40, 48, 80)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_bytes(value, key: str = "--budget") -> int:
    """Bytes from ``24GiB`` (binary units), ``80GB`` (decimal units) or a whole number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    unit = match.group(2).upper() if match else ""
    if match and (unit in UNITS or (unit == "" and "." not in match.group(1))):
        size = int(float(match.group(1)) * UNITS.get(unit, 1))
        if size > 0:
            return size
    raise ConfigError(
        f"{key} is {value!r}, which is not a memory size. Give a positive number of bytes or a number with a "
        f"unit: KiB, MiB, GiB, TiB (powers of 1024, as GPU memory is quoted: 24GiB) or KB, MB, GB, TB "
        f"(powers of 1000: 80GB)."
    )


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it >= 1 (``12.3 GiB``)."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def format_flops(n: float) -> str:
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} FLOP"


def smallest_card(peak: int) -> int | None:
    """The smallest of CARDS_GIB (in GiB) that holds ``peak`` bytes, or None."""
    return next((c for c in CARDS_GIB if peak <= c * 2**30), None)
