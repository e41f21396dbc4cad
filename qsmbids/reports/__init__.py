"""Visual reports: figures for each run (:mod:`.reportlets`) and the per-subject HTML page (:mod:`.core`).

:data:`REPORTLETS` is the one table both ends read: the report workflow names its ``ds_report_<desc>`` sinks from
it, and :func:`~qsmbids.reports.core.generate_reports` sorts the files it finds in ``sub-XX/figures/`` into the
page's sections by their ``desc`` entity, so a name changed here changes in both places.
"""

from __future__ import annotations

__all__ = ["REPORTLETS", "SECTIONS"]

#: desc → (suffix, section, caption). Files are ``<run prefix>_desc-<desc>_<suffix>.<svg|html|json>``.
REPORTLETS: dict[str, tuple[str, str, str]] = {
    "summary": ("MEGRE", "Summary", "Acquisition and processing summary"),
    "plausibility": ("Chimap", "Summary", "Plausibility checks (real data have no ground truth)"),
    "mask": ("MEGRE", "Mask", "Brain mask outline on the first-echo magnitude"),
    "totalfield": ("MEGRE", "Fields", "Total field (Hz) after unwrapping and echo combination"),
    "localfield": ("MEGRE", "Fields", "Local field (ppm) after background field removal"),
    "chimap": ("Chimap", "Susceptibility", "Susceptibility map χ (ppm), window ±0.15 ppm"),
    "r2star": ("R2starmap", "Relaxometry", "R2* (1/s), window 0–60 1/s"),
    "swi": ("MEGRE", "SWI", "Susceptibility-weighted image"),
    "minip": ("MEGRE", "SWI", "Minimum intensity projection of the SWI"),
    "accuracy": ("Chimap", "Accuracy", "Accuracy against the simulated ground truth"),
}

#: Sections of one run, in page order.
SECTIONS: tuple[str, ...] = ("Summary", "Mask", "Fields", "Susceptibility", "Relaxometry", "SWI", "Accuracy")
