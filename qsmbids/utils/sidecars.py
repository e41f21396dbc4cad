"""The numbers qsmbids takes from the JSON sidecars, checked in one place.

Every sidecar number goes through :func:`sidecar_number`: it must be a JSON number (not a string such as ``"n/a"``,
not ``null``, not ``true``: a bool is no number even though Python counts it as one), finite, and inside the range
its unit allows (echo times in seconds, field strength in tesla, imaging frequency in MHz); a value that fits the
range only in another unit (milliseconds, Hz) is named as such. A bad value refuses the run (65) with one line naming
the sidecar and the field. :func:`echo_times` and :func:`field_strength` apply it to the per-echo sidecars and to the
4-D form (``EchoTime`` as a list) alike.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..config import MAX_ECHO_TIME_S
from ..constants import GAMMA_BAR_MHZ_T
from ..exit_codes import EX_DATAERR, InputError

__all__ = ["FIELDS", "GAMMA_BAR_MHZ_T", "TE_MS_THRESHOLD", "echo_times", "field_strength", "sidecar_number"]

#: an echo time of this many seconds or more is surely in milliseconds: the threshold of ``--echo-times`` and the
#: settings (:data:`qsmbids.config.MAX_ECHO_TIME_S`), applied to the sidecars
TE_MS_THRESHOLD = MAX_ECHO_TIME_S
#: the strongest human and animal MR magnets are below this (T)
MAX_FIELD_T = 30.0
#: MagneticFieldStrength and ImagingFrequency/γ may differ by this fraction before a warning (a 2.89 T "3 T" magnet
#: differs by 4 %)
FIELD_TOLERANCE = 0.05


@dataclass(frozen=True)
class Field:
    """What a sidecar number must be: ``bad`` is the message for a value that is not (``{label}``, ``{value}``), the
    open range (lo, hi) in the BIDS unit, and the other units (name, factor to the BIDS unit) that a value above the
    range is recognised in (when it falls into the range's upper three decades in that unit)."""

    bad: str
    lo: float
    hi: float
    other_units: tuple[tuple[str, float], ...] = ()
    hint: str = ""


FIELDS = {
    "EchoTime": Field("{label} must be a positive number of seconds, got {value}", 0.0, TE_MS_THRESHOLD,
                      (("milliseconds", 1e-3),), "fix the sidecars or give --echo-times in seconds"),
    "MagneticFieldStrength": Field("{label} {value} is not a field strength in tesla", 0.0, MAX_FIELD_T, (),
                                   "fix the sidecars or give --field-strength in tesla"),
    "ImagingFrequency": Field("{label} {value} is not an imaging frequency in MHz", 0.0, MAX_FIELD_T * GAMMA_BAR_MHZ_T,
                              (("Hz", 1e-6),), "fix the sidecars or give --field-strength in tesla"),
}
_BIDS_UNIT = {"EchoTime": "seconds", "MagneticFieldStrength": "tesla", "ImagingFrequency": "MHz"}


def _refuse(message: str):
    return InputError(EX_DATAERR, message)


def _shown(value: Any) -> str:
    """The value as it stands in the JSON file (``null``, ``true``, ``"n/a"``)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def sidecar_number(value: Any, *, sidecar: str, name: str, label: str | None = None) -> float:
    """``value`` of the sidecar field ``name`` as a float, or :class:`~qsmbids.exit_codes.InputError` (65).

    ``label`` names the value in the message when it is not the whole field (``EchoTime of echo 2``).

    >>> sidecar_number(0.004, sidecar="a.json", name="EchoTime")
    0.004
    >>> sidecar_number(True, sidecar="a.json", name="MagneticFieldStrength")
    Traceback (most recent call last):
    ...
    qsmbids.exit_codes.InputError: a.json: MagneticFieldStrength true is not a field strength in tesla (a JSON \
boolean, not a number); fix the sidecars or give --field-strength in tesla
    >>> sidecar_number(127732436, sidecar="a.json", name="ImagingFrequency")
    Traceback (most recent call last):
    ...
    qsmbids.exit_codes.InputError: a.json: ImagingFrequency 127732436 looks like Hz; BIDS wants MHz (fix the \
sidecars or give --field-strength in tesla)
    """
    spec = FIELDS[name]
    label = label or name
    said = f"{label} {_shown(value)}" if label == name else f"{label} ({_shown(value)})"
    tail = f"; {spec.hint}" if spec.hint else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = " (a JSON boolean, not a number)" if isinstance(value, bool) else ""
        raise _refuse(f"{sidecar}: {spec.bad.format(label=label, value=_shown(value))}{kind}{tail}")
    v = float(value)
    if not math.isfinite(v) or v <= spec.lo:
        raise _refuse(f"{sidecar}: {spec.bad.format(label=label, value=_shown(value))}{tail}")
    if v >= spec.hi:
        for unit, factor in spec.other_units:
            if spec.hi / 1000 < v * factor < spec.hi:  # within the upper three decades of the range
                raise _refuse(f"{sidecar}: {said} looks like {unit}; BIDS wants {_BIDS_UNIT[name]}"
                              + (f" ({spec.hint})" if spec.hint else ""))
        raise _refuse(f"{sidecar}: {spec.bad.format(label=label, value=_shown(value))}{tail}")
    return v


def echo_times(sidecars: Sequence[tuple[str, dict]], n_echoes: int, *, four_d: bool,
               image: str) -> tuple[float, ...]:
    """Echo times (s) from the phase sidecars: one ``(path, metadata)`` per echo, or one holding a list (4-D).

    ``image`` is named when a 4-D image has no list of the right length.
    """
    if four_d:
        sidecar, meta = sidecars[0]
        te = meta.get("EchoTime")
        if not isinstance(te, list) or len(te) != n_echoes:
            raise _refuse(f"{image}: 4-D multi-echo image needs EchoTime as a list of {n_echoes} values in its "
                          "sidecar (or --echo-times)")
        tes = tuple(sidecar_number(t, sidecar=sidecar, name="EchoTime", label=f"EchoTime of echo {i}")
                    for i, t in enumerate(te, start=1))
    else:
        tes_list = []
        for sidecar, meta in sidecars:
            if meta.get("EchoTime") is None and "EchoTime" not in meta:
                raise _refuse(f"{sidecar}: EchoTime missing (give --echo-times in seconds)")
            tes_list.append(sidecar_number(meta["EchoTime"], sidecar=sidecar, name="EchoTime"))
        tes = tuple(tes_list)
    if any(b <= a for a, b in itertools.pairwise(tes)):
        raise _refuse(f"{sidecars[0][0]}: echo times {list(tes)} are not increasing")
    return tes


def field_strength(sidecars: Sequence[tuple[str, dict]]) -> tuple[float, list[str]]:
    """B0 (T) and warnings, from ``MagneticFieldStrength`` (else ``ImagingFrequency``/γ) of the phase sidecars.

    Every sidecar's values are checked; the first sidecar's are used. ``MagneticFieldStrength`` is the nominal
    field (3 T for a 2.89 T magnet), so a disagreement with the frequency beyond :data:`FIELD_TOLERANCE` is only a
    warning, and the frequency (the actual field) wins only where the nominal field is missing.
    """
    checked = []
    for sidecar, meta in sidecars:
        b0 = meta.get("MagneticFieldStrength")
        freq = meta.get("ImagingFrequency")
        if "MagneticFieldStrength" in meta:
            b0 = sidecar_number(b0, sidecar=sidecar, name="MagneticFieldStrength")
        if "ImagingFrequency" in meta:
            freq = sidecar_number(freq, sidecar=sidecar, name="ImagingFrequency")
        checked.append((sidecar, b0, freq))
    sidecar, b0, freq = checked[0]
    if b0 is None and freq is None:
        raise _refuse(f"{sidecar}: MagneticFieldStrength missing (give --field-strength in tesla)")
    if b0 is None:
        b0 = freq / GAMMA_BAR_MHZ_T
        return b0, [f"MagneticFieldStrength missing; {b0:.3f} T from ImagingFrequency"]
    warnings = []
    if freq is not None and abs(freq / GAMMA_BAR_MHZ_T - b0) > FIELD_TOLERANCE * b0:
        warnings.append(f"MagneticFieldStrength {b0:g} T and ImagingFrequency {freq:g} MHz "
                        f"({freq / GAMMA_BAR_MHZ_T:.2f} T) differ by more than {100 * FIELD_TOLERANCE:.0f} %; "
                        f"{b0:g} T used (check the sidecars, or give --field-strength)")
    return b0, warnings
