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

from adcache._generated import BadArgumentError

MICROS_PER_UNIT = 1_000_000
_MICRO = Decimal(1)

Amount = Decimal | int | float | str


def to_decimal(value: Amount) -> Decimal:
    """An amount as an exact Decimal; anything else (a bool, text that is not a number, NaN,
    an infinity) raises BadArgumentError before any call is made."""
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, float, str)):
        raise BadArgumentError(f"not a money amount: {value!r}")
    if isinstance(value, float):
        value = repr(value)
    try:
        d = Decimal(value)
    except (InvalidOperation, ValueError) as e:
        raise BadArgumentError(f"not a money amount: {value!r}") from e
    if not d.is_finite():
        raise BadArgumentError(f"not a finite money amount: {value!r}")
    return d


def to_micros(value: Amount) -> int:
    """Currency units (or CPM) to integer micros, exactly, rounding half-even below one micro."""
    d = to_decimal(value)
    try:
        return int((d * MICROS_PER_UNIT).quantize(_MICRO, rounding=ROUND_HALF_EVEN))
    except ArithmeticError as e:  # beyond what a Decimal context holds
        raise BadArgumentError(f"money amount out of range: {value!r}") from e


def from_micros(micros: int) -> Decimal:
    """Integer micros to an exact Decimal amount."""
    return Decimal(int(micros)) / MICROS_PER_UNIT


def impression_cost_micros(cpm_micros: int) -> int:
    """Cost of one impression at a CPM price, in micros, rounded half-even."""
    return int((Decimal(cpm_micros) / 1000).quantize(_MICRO, rounding=ROUND_HALF_EVEN))
