"""Write synthetic classic MR DICOM (one slice per file) with pydicom, in the styles of two vendors.

``write_megre(folder, mag, phase, affine, tes_ms, style=...)`` writes magnitude and phase of every echo:

* ``siemens``: magnitude and phase as two series (phase = magnitude + 1, as the scanner exports them), phase stored
  0…4095 with RescaleSlope 2 and RescaleIntercept −4096 (−4096…4094 ↔ −π…π), ImageType ``…\\M\\ND`` / ``…\\P\\ND``;
* ``ge``: one series of real and imaginary images (signed), told apart by GE's private image type (0043,102F);
* ``philips``: one series with both parts, phase stored with a rescale straight to radians (the slope/intercept that
  Philips writes for phase maps), ImageType ``…\\M\\FFE`` / ``…\\P\\FFE``.

The geometry follows the NIfTI affine: LPS = diag(−1, −1, 1)·RAS; a DICOM row runs along the NIfTI i axis, a column
along j, one file per k.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _slice(folder: Path, name: str, pixels: np.ndarray, affine: np.ndarray, k: int, common: dict, **tags) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(folder / name), {}, file_meta=meta, preamble=b"\0" * 128)
    ge_type = tags.pop("ge_type", None)
    for key, val in {**common, **tags}.items():
        setattr(ds, key, val)
    if ge_type is not None:
        ds.add_new((0x0043, 0x0010), "LO", "GEMS_PARM_01")
        ds.add_new((0x0043, 0x102F), "SS", ge_type)
    ds.SOPClassUID = MR_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    vs = np.linalg.norm(lps[:3, :3], axis=0)
    ds.ImageOrientationPatient = [f"{x:.6f}" for x in np.r_[lps[:3, 0] / vs[0], lps[:3, 1] / vs[1]]]
    ds.ImagePositionPatient = [f"{x:.4f}" for x in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
    ds.PixelSpacing = [f"{vs[1]:g}", f"{vs[0]:g}"]
    ds.SliceThickness = f"{vs[2]:g}"
    ds.SpacingBetweenSlices = f"{vs[2]:g}"
    ds.SliceLocation = f"{float((lps @ np.array([0.0, 0.0, k, 1.0]))[2]):.4f}"
    ds.Rows, ds.Columns = pixels.shape[1], pixels.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    signed = bool(pixels.min() < 0)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
    ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T.astype("<i2" if signed else "<u2")).tobytes()
    ds.save_as(folder / name, enforce_file_format=True)


def write_megre(folder: Path, mag: np.ndarray, phase: np.ndarray, affine: np.ndarray, tes_ms, *,
                style: str = "siemens", acq_type: str = "3D", patient_id: str = "SIM01", field_strength: float = 3.0,
                series_number: int = 5, extra: dict | None = None, study_uid: str | None = None) -> None:
    """``mag``/``phase``: (x, y, z, echoes); phase in radians (−π…π)."""
    folder.mkdir(parents=True, exist_ok=True)
    study = study_uid or generate_uid()
    frame = generate_uid()
    now = datetime.datetime(2026, 1, 2, 10, 0, 0)
    common = {"Modality": "MR", "PatientID": patient_id, "PatientName": patient_id, "StudyInstanceUID": study,
              "StudyDate": now.strftime("%Y%m%d"), "StudyTime": "100000", "FrameOfReferenceUID": frame,
              "Manufacturer": {"siemens": "SIEMENS", "ge": "GE MEDICAL SYSTEMS"}.get(style, "Philips Medical Systems"),
              "MagneticFieldStrength": f"{field_strength:g}", "ImagingFrequency": f"{42.577478518 * field_strength:.6f}",
              "ScanningSequence": "GR", "SequenceVariant": "SP", "MRAcquisitionType": acq_type,
              "RepetitionTime": "30", "FlipAngle": "15", "PatientPosition": "HFS", "ProtocolName": "gre_qsm",
              "SeriesDescription": "gre_qsm", "AcquisitionNumber": 1, **(extra or {})}
    mscale = 4000.0 / max(float(mag.max()), 1e-12)
    mag_u = np.clip(np.round(mag * mscale), 0, 65535)
    n_e = mag.shape[3]
    if style == "siemens":
        stored = np.clip(np.round((phase * 4096.0 / np.pi + 4096.0) / 2.0), 0, 4095)
        series = [(series_number, "mag", ["ORIGINAL", "PRIMARY", "M", "ND"], mag_u, ("1", "0")),
                  (series_number + 1, "phase", ["ORIGINAL", "PRIMARY", "P", "ND"], stored, ("2", "-4096"))]
        uids = {series_number: generate_uid(), series_number + 1: generate_uid()}
    elif style == "ge":  # one series of real and imaginary images, told apart by GE's private image type
        z = mag * np.exp(1j * phase) * (16000.0 / max(float(mag.max()), 1e-12))
        series = [(series_number, 2, ["ORIGINAL", "PRIMARY", "OTHER"], np.round(z.real), ("1", "0")),
                  (series_number, 3, ["ORIGINAL", "PRIMARY", "OTHER"], np.round(z.imag), ("1", "0"))]
        uids = {series_number: generate_uid()}
    else:
        slope = 2 * np.pi / 4095.0
        stored = np.clip(np.round((phase + np.pi) / slope), 0, 4095)
        series = [(series_number, "mag", ["ORIGINAL", "PRIMARY", "M", "FFE"], mag_u, ("1", "0")),
                  (series_number, "phase", ["ORIGINAL", "PRIMARY", "P", "FFE"], stored,
                   (f"{slope:.12g}", f"{-np.pi:.12g}"))]
        uids = {series_number: generate_uid()}
    inst = 0
    for number, part, itype, data, (slope_s, inter_s) in series:
        for e in range(n_e):
            for k in range(mag.shape[2]):
                inst += 1
                private, label = {}, part
                if isinstance(part, int):  # GE: (0043,102F) image type 0 mag, 1 phase, 2 real, 3 imaginary
                    private, label = {"ge_type": part}, {2: "real", 3: "imag"}[part]
                _slice(folder, f"{number:03d}_{label}_e{e + 1}_{k:03d}.dcm", data[..., e], affine, k, common,
                       SeriesInstanceUID=uids[number], SeriesNumber=number, ImageType=itype,
                       EchoTime=f"{tes_ms[e]:g}", EchoNumbers=e + 1, InstanceNumber=inst, RescaleSlope=slope_s,
                       RescaleIntercept=inter_s, RescaleType="US", **private)
