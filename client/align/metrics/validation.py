"""Input checks shared by every metric: one rule per kind of input.

Like scikit-learn's ``utils/validation.py``: each metric calls these instead of writing
its own checks, so the same input is accepted or refused with the same message
everywhere. Every refusal is an :class:`~align.errors.InvalidInputError` naming the
field (``field: problem (expected ...)``), except non-finite feature values, which are
a :class:`~align.errors.NumericalError` naming the entry.

The rules
---------
features (:func:`check_features`)
    A 2-D ``(n, p)`` array of real numbers (integer or float dtype; not bool, complex or
    object) with ``n >= 1`` and ``p >= 1``. A row that is entirely NaN marks a MISSING
    stimulus (docs/DESIGN.md, "missing stimuli"); any other NaN or infinity is refused.
    At least one row must be present. ``n_rows`` (when given) must match.
triplets (:func:`check_triplets`)
    A NON-EMPTY ``(m, 3)`` array of 0-based indices in ``[0, n_objects)``, three
    distinct objects per row. Integer dtype, or float holding whole numbers. An empty
    array is always refused ("at least one triplet"): no metric, split or fit has
    anything to do with zero triplets, and accepting it in one place and refusing it in
    another is how the two earlier ``check_triplets`` disagreed.
scalars (:func:`check_scalar`)
    A real number (or an integer when ``integer=True``; bool is never a number), finite,
    within the given bounds.
choices (:func:`check_choice`), flags (:func:`check_bool`)
    One of the allowed strings; ``True``/``False`` (numpy bools included).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from ..errors import InvalidInputError, NumericalError

__all__ = [
    "check_bool",
    "check_choice",
    "check_features",
    "check_present",
    "check_scalar",
    "check_triplets",
]


def check_features(
    X: object,
    field: str = "features",
    *,
    n_rows: int | None = None,
    rows_expected: str | None = None,
    row_names: Sequence[object] | None = None,
    as_float64: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a feature matrix (module docstring); return ``(X, missing)``.

    ``X`` comes back as a C-contiguous float64 array (no copy when it already is one);
    with ``as_float64=False`` a float array keeps its dtype and only integers are
    converted. ``missing`` is the ``(n,)`` bool mask of all-NaN rows. ``n_rows``: the
    required number of rows, ``rows_expected`` the words for it in the message;
    ``row_names`` (one per row) name the offending row in a NumericalError.
    """
    try:
        arr = np.asarray(X)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(field, f"is not array-like ({exc})", "an (n, p) array") from None
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise InvalidInputError(
            field, f"has dtype {arr.dtype}", "real numbers (a float or integer array)"
        )
    if arr.ndim != 2:
        raise InvalidInputError(field, f"has shape {arr.shape}", "a 2-D (n, p) array")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise InvalidInputError(
            field, f"has {arr.shape[0]} rows", rows_expected or f"{n_rows} rows"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InvalidInputError(
            field, f"is empty, shape {arr.shape}", "at least one row and column"
        )
    if as_float64 or not np.issubdtype(arr.dtype, np.floating):
        arr = np.ascontiguousarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if finite.all():
        return arr, np.zeros(arr.shape[0], dtype=bool)
    missing: np.ndarray = np.asarray(np.isnan(arr).all(axis=1))
    bad = ~finite & ~missing[:, None]
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        name = "" if row_names is None else f" {row_names[r]!r}"
        raise NumericalError(
            f"{field}[{r}, {c}] is {arr[r, c]} (row {r}{name} column {c}): only a whole row "
            "of NaN may mark a missing stimulus; infinities are never accepted "
            f"({int(bad.any(axis=1).sum())} rows hold such values)"
        )
    if missing.all():
        raise InvalidInputError(field, "has only all-NaN (missing) rows", "some present rows")
    return arr, missing


def check_triplets(triplets: object, n_objects: int, field: str = "triplets") -> np.ndarray:
    """Validate triplets (module docstring); return a C-contiguous int64 copy.

    Refusals name ``field`` and, where it applies, the first offending row
    (``triplets[4]``).
    """
    try:
        arr = np.asarray(triplets)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(field, f"is not array-like ({exc})", "an (m, 3) array") from None
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InvalidInputError(field, f"has shape {arr.shape}", "an (m, 3) integer array")
    if arr.shape[0] == 0:
        raise InvalidInputError(field, "is empty", "at least one triplet")
    if np.issubdtype(arr.dtype, np.floating):
        whole = np.isfinite(arr) & (arr == np.round(arr))
        if not whole.all():
            row = int(np.argwhere(~whole)[0, 0])
            raise InvalidInputError(
                f"{field}[{row}]", f"is {arr[row].tolist()}", "whole-number indices"
            )
    elif arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInputError(field, f"has dtype {arr.dtype}", "integer indices")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    lowest, highest, repeat = _scan_triplets(out)
    if lowest < 0 or highest >= n_objects:  # located only on failure
        row = int(np.argwhere((out < 0) | (out >= n_objects))[0, 0])
        raise InvalidInputError(
            f"{field}[{row}]",
            f"is {out[row].tolist()}, out of range",
            f"0-based indices in [0, {n_objects}) (one per stimulus row)",
        )
    if repeat >= 0:
        raise InvalidInputError(
            f"{field}[{repeat}]",
            f"repeats a stimulus: {out[repeat].tolist()}",
            "three distinct objects",
        )
    return out


#: Rows per block of :func:`_scan_triplets` (3 int64 columns: 384 KiB, within L2).
_SCAN_ROWS = 1 << 14


def _scan_triplets(out: np.ndarray) -> tuple[int, int, int]:
    """``(smallest index, largest index, first row repeating a stimulus or -1)`` of
    ``out`` (m, 3) int64, in one pass of cache-sized blocks: at THINGS scale (4.7 M
    triplets) the whole-array reductions and column comparisons read the 113 MB five
    times over (20 ms, a tenth of a zero-shot pass); block by block they read it once."""
    lowest = highest = int(out[0, 0])
    repeat = -1
    for start in range(0, out.shape[0], _SCAN_ROWS):
        block = out[start : start + _SCAN_ROWS]
        lowest, highest = min(lowest, int(block.min())), max(highest, int(block.max()))
        if repeat < 0:
            a, b, c = block[:, 0], block[:, 1], block[:, 2]
            same = a == b
            same |= a == c
            same |= b == c
            if same.any():
                repeat = start + int(np.argmax(same))
    return lowest, highest, repeat


def check_present(triplets: np.ndarray, missing: np.ndarray, field: str = "triplets") -> None:
    """Refuse checked ``triplets`` that touch a missing stimulus (a ``missing`` row)."""
    if missing.any():
        touch = missing[triplets].any(axis=1)
        if touch.any():
            row = int(np.flatnonzero(touch)[0])
            raise InvalidInputError(
                f"{field}[{row}]",
                f"touches a missing stimulus (all-NaN row) {triplets[row].tolist()}",
                "triplets over present stimuli",
            )


def check_scalar(
    value: object,
    field: str,
    *,
    integer: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    include_minimum: bool = True,
    include_maximum: bool = True,
) -> float:
    """A finite real number (an ``int`` when ``integer``) within the bounds; returns it
    as ``float`` (or ``int``). bool is refused: ``True`` is not a number here."""
    kind = numbers.Integral if integer else numbers.Real
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, kind)
    if ok:
        v = int(value) if integer else float(value)  # type: ignore[call-overload,arg-type]
        ok = math.isfinite(v)
        if ok and minimum is not None:
            ok = v >= minimum if include_minimum else v > minimum
        if ok and maximum is not None:
            ok = v <= maximum if include_maximum else v < maximum
        if ok:
            return v
    noun = "an integer" if integer else "a finite number"
    if minimum is not None and maximum is not None:
        lo = "[" if include_minimum else "("
        hi = "]" if include_maximum else ")"
        expected = f"{noun} in {lo}{minimum:g}, {maximum:g}{hi}"
    elif minimum is not None:
        expected = f"{noun} {'>=' if include_minimum else '>'} {minimum:g}"
    elif maximum is not None:
        expected = f"{noun} {'<=' if include_maximum else '<'} {maximum:g}"
    else:
        expected = noun
    raise InvalidInputError(field, f"is {value!r}", expected)


def check_choice(value: object, field: str, allowed: Sequence[str]) -> str:
    """One of the ``allowed`` strings."""
    if not isinstance(value, str) or value not in allowed:
        raise InvalidInputError(field, f"is {value!r}", "one of " + ", ".join(map(repr, allowed)))
    return value


def check_bool(value: object, field: str) -> bool:
    """``True`` or ``False`` (numpy bools included; 0/1 are not flags)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(field, f"is {value!r}", "True or False")
    return bool(value)
