"""Money at the Python edge: exact conversion between currency amounts and integer micros.

The server only ever sees integer micro-units (1 unit = 1,000,000 micros). Conversions go through
`Decimal`, never through binary floats: a float is first turned into its shortest repr
(`Decimal(str(x))`), so 2.8 is 2.8 and not 2.79999.... Amounts finer than one micro are rounded
half-even (banker's rounding) to the nearest micro; that is the only rounding adcache does.
OpenRTB prices are CPM (per thousand impressions): a CPM price is stored as micros of CPM, and
the cost of one impression is `cpm_micros / 1000` (see `impression_cost_micros`).
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

MICROS_PER_UNIT = 1_000_000
_MICRO = Decimal(1)

Amount = Decimal | int | float | str


def to_decimal(value: Amount) -> Decimal:
    if isinstance(value, bool):
        raise TypeError("a money amount cannot be a bool")
    if isinstance(value, float):
        value = repr(value)
    try:
        d = Decimal(value)
    except InvalidOperation as e:
        raise ValueError(f"not a money amount: {value!r}") from e
    if not d.is_finite():
        raise ValueError(f"not a finite money amount: {value!r}")
    return d


def to_micros(value: Amount) -> int:
    """Currency units (or CPM) to integer micros, exactly, rounding half-even below one micro."""
    return int((to_decimal(value) * MICROS_PER_UNIT).quantize(_MICRO, rounding=ROUND_HALF_EVEN))


def from_micros(micros: int) -> Decimal:
    """Integer micros to an exact Decimal amount."""
    return Decimal(int(micros)) / MICROS_PER_UNIT


def impression_cost_micros(cpm_micros: int) -> int:
    """Cost of one impression at a CPM price, in micros, rounded half-even."""
    return int((Decimal(cpm_micros) / 1000).quantize(_MICRO, rounding=ROUND_HALF_EVEN))
