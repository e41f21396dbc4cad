"""Discovery of MEGRE runs (qsmbids.utils.bids): grouping, echo order, filters, sidecars, ground truth, refusals.

Most tests write tiny BIDS trees (8³ voxels) with :func:`write_run`; the simulated dataset (``sim_bids``) is used
where ground truth is needed. The refusals tested here are the :class:`InputError` branches that the CLI tests
(tests/cli/test_run_errors.py) do not reach; each must carry its BIDS-Apps exit code and name the offending file.
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qsmbids.utils.bids import (
    GAMMA_BAR_MHZ_T,
    InputError,
    check_bids_root,
    collect_runs,
    ground_truth_for,
    validate_bids,
)

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
SHAPE = (8, 8, 8)
SIM_TRUTH = Path("derivatives") / "qsmbids-sim" / "sub-01" / "anat"


# ------------------------------------------------------------------------------------------------------------
# tiny BIDS trees
# ------------------------------------------------------------------------------------------------------------
def make_dataset(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0"}))
    return root


def write_json(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps({k: v for k, v in doc.items() if v is not None}))
    return path


def write_nii(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


def write_run(root: Path, sub: str = "01", *, ses: str | None = None, acq: str | None = None,
              rec: str | None = None, run: int | None = None, echoes: int = 2, tes: list | None = None,
              suffix: str = "MEGRE", magnitude: bool = True, four_d: bool = False, echo_entity: bool = True,
              shape: tuple[int, ...] = SHAPE, sidecar: dict | None = None, seed: int = 0) -> dict[str, list[Path]]:
    """One run: phase (Units rad) and magnitude per echo, or one 4-D file of each; returns the NIfTI paths.

    ``sidecar`` entries are merged into every sidecar (a value of None drops the key).
    """
    rng = np.random.default_rng(seed)
    folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    parts = [f"sub-{sub}"] + [f"{k}-{v}" for k, v in (("ses", ses), ("acq", acq), ("rec", rec), ("run", run)) if v]
    prefix = "_".join(parts)
    tes = list(tes) if tes is not None else [0.005 * (e + 1) for e in range(echoes)]
    out: dict[str, list[Path]] = {"phase": [], "mag": []}
    volumes = [None] if four_d else list(range(echoes))
    for e in volumes:
        for part in ("phase", "mag") if magnitude else ("phase",):
            vol_shape = (*shape, echoes) if four_d else shape
            data = (rng.uniform(-np.pi, np.pi, vol_shape) if part == "phase" else rng.uniform(1, 2, vol_shape))
            echo = f"_echo-{e + 1}" if (e is not None and echo_entity) else ""
            stem = folder / f"{prefix}{echo}_part-{part}_{suffix}"
            out[part].append(write_nii(Path(f"{stem}.nii.gz"), data.astype(np.float32)))
            doc = {"EchoTime": tes if four_d else tes[e], "MagneticFieldStrength": 3.0,
                   "Units": "rad" if part == "phase" else None}
            write_json(Path(f"{stem}.json"), {**doc, **(sidecar or {})})
    return out


def names(runs) -> list[str]:
    return [r.name for r in runs]


def base_tree(tmp_path: Path, **kw) -> tuple[Path, dict[str, list[Path]]]:
    root = make_dataset(tmp_path / "ds")
    return root, write_run(root, **kw)


def refused(code: int, *needles: str, **kwargs) -> InputError:
    """Call collect_runs and return the InputError after checking its exit code and message."""
    with pytest.raises(InputError) as info:
        collect_runs(**kwargs)
    err = info.value
    assert err.code == code, str(err)
    for needle in needles:
        assert needle in str(err), str(err)
    assert "\n" not in str(err)
    return err


# ------------------------------------------------------------------------------------------------------------
# grouping and order
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sessions_tree(tmp_path_factory) -> Path:
    """sub-01: 2 sessions × 2 runs plus an acq-fast run in ses-1; sub-02: one run in ses-1."""
    root = make_dataset(tmp_path_factory.mktemp("grouping") / "ds")
    seed = 0
    for ses in ("1", "2"):
        for run in (1, 2):
            seed += 1
            write_run(root, ses=ses, run=run, seed=seed)
    write_run(root, ses="1", acq="fast", echoes=3, seed=10)
    write_run(root, "02", ses="1", run=1, seed=11)
    return root


def test_runs_grouped_by_session_acq_run(sessions_tree):
    runs = collect_runs(sessions_tree)
    assert sorted(names(runs)) == sorted([
        "sub-01_ses-1_run-1", "sub-01_ses-1_run-2", "sub-01_ses-2_run-1", "sub-01_ses-2_run-2",
        "sub-01_ses-1_acq-fast", "sub-02_ses-1_run-1"])
    by_name = {r.name: r for r in runs}
    fast = by_name["sub-01_ses-1_acq-fast"]
    assert fast.entities == {"subject": "01", "session": "1", "acquisition": "fast"}
    assert fast.n_echoes == 3 and fast.echo_times == (0.005, 0.01, 0.015)
    r = by_name["sub-01_ses-2_run-1"]
    assert r.entities == {"subject": "01", "session": "2", "run": "1"}
    assert r.n_echoes == 2 and r.field_strength == 3.0 and r.phase_units == "rad" and r.warnings == ()
    for run in runs:
        assert len(run.phase) == run.n_echoes
        for p in run.phase:
            assert Path(p).name.startswith(run.name + "_echo-"), (run.name, p)
            assert "part-phase" in p
        assert len(run.magnitude) == run.n_echoes
        assert run.source_files == [*run.phase, *run.magnitude]
        assert run.truth == {}


def test_magnitude_paired_with_its_own_run(sessions_tree):
    for run in collect_runs(sessions_tree):
        assert [p.replace("part-phase", "part-mag") for p in run.phase] == list(run.magnitude), run.name


def test_magnitude_of_run_without_acq_is_not_taken_from_acq_variant(tmp_path):
    root = make_dataset(tmp_path / "ds")
    write_run(root, seed=1)
    write_run(root, acq="fast", seed=2)
    runs = {r.name: r for r in collect_runs(root)}
    assert set(runs) == {"sub-01", "sub-01_acq-fast"}
    plain = runs["sub-01"]
    assert [Path(p).name for p in plain.magnitude] == ["sub-01_echo-1_part-mag_MEGRE.nii.gz",
                                                      "sub-01_echo-2_part-mag_MEGRE.nii.gz"]


def test_megre_and_t2starw_with_the_same_entities_are_refused(tmp_path):
    root = make_dataset(tmp_path / "ds")
    write_run(root, seed=1)
    write_run(root, suffix="T2starw", echoes=1, echo_entity=False, magnitude=False, seed=2)
    with pytest.raises(InputError) as err:
        collect_runs(root, need_magnitude=False)
    assert err.value.code == 65 and "same names" in str(err.value)


def test_t2starw_run_name_carries_its_suffix(tmp_path):
    root = make_dataset(tmp_path / "ds")
    write_run(root, suffix="T2starw", echoes=1, echo_entity=False, magnitude=False, seed=2)
    (run,) = collect_runs(root, need_magnitude=False)
    assert run.name == "sub-01_T2starw"


def test_echo_10_sorts_after_echo_2(tmp_path):
    tes = [0.002 * (e + 1) for e in range(11)]
    root, files = base_tree(tmp_path, echoes=11, tes=tes)
    (run,) = collect_runs(root)
    assert run.n_echoes == 11
    assert [int(Path(p).name.split("_echo-")[1].split("_")[0]) for p in run.phase] == list(range(1, 12))
    assert run.echo_times == pytest.approx(tes)
    assert list(run.phase) == [str(p) for p in files["phase"]]
    assert list(run.magnitude) == [str(p) for p in files["mag"]]


# ------------------------------------------------------------------------------------------------------------
# selection: labels and filters
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("label", ["02", "sub-02"])
def test_participant_label_with_or_without_prefix(sessions_tree, label):
    assert names(collect_runs(sessions_tree, participant_label=[label])) == ["sub-02_ses-1_run-1"]


@pytest.mark.parametrize("label", ["2", "ses-2"])
def test_session_filter(sessions_tree, label):
    assert sorted(names(collect_runs(sessions_tree, session_label=(label,)))) == ["sub-01_ses-2_run-1",
                                                                                   "sub-01_ses-2_run-2"]


def test_participant_and_session_together(sessions_tree):
    assert names(collect_runs(sessions_tree, participant_label=["sub-02"], session_label=["1"])) == [
        "sub-02_ses-1_run-1"]
    refused(18, "no multi-echo GRE", "sub-02", "ses-2", bids_dir=sessions_tree, participant_label=["02"],
            session_label=["2"])


@pytest.mark.parametrize("filters, expected", [
    ({"run": 2}, ["sub-01_ses-1_run-2", "sub-01_ses-2_run-2"]),
    ({"run": "2", "session": "1"}, ["sub-01_ses-1_run-2"]),
    ({"megre": {"acquisition": "fast"}}, ["sub-01_ses-1_acq-fast"]),
    ({"megre": {"subject": "02", "suffix": "T1w", "part": "mag"}}, ["sub-02_ses-1_run-1"]),  # suffix/part ignored
    ({"acquisition": None, "subject": "01", "session": "1"}, ["sub-01_ses-1_run-1", "sub-01_ses-1_run-2"]),
    # an fMRIPrep filter file without a megre entry filters nothing here
    ({"t1w": {"acquisition": "mprage"}, "bold": {"task": "rest"}},
     ["sub-01_ses-1_acq-fast", "sub-01_ses-1_run-1", "sub-01_ses-1_run-2", "sub-01_ses-2_run-1",
      "sub-01_ses-2_run-2", "sub-02_ses-1_run-1"]),
])
def test_bids_filters(sessions_tree, filters, expected):
    assert sorted(names(collect_runs(sessions_tree, bids_filters=filters))) == expected


def test_filter_matching_nothing_names_the_filter(sessions_tree):
    refused(18, str(sessions_tree), '"acquisition": "slow"', bids_dir=sessions_tree,
            bids_filters={"megre": {"acquisition": "slow"}})


def test_invalid_filter_entity(sessions_tree):
    refused(18, "--bids-filter-file", "invalid filter", "foo", bids_dir=sessions_tree, bids_filters={"foo": "bar"})


# ------------------------------------------------------------------------------------------------------------
# 4-D files, single echo, overrides, sidecars
# ------------------------------------------------------------------------------------------------------------
def test_4d_multi_echo_with_echo_time_list(tmp_path):
    root, files = base_tree(tmp_path, echoes=3, four_d=True)
    (run,) = collect_runs(root)
    assert run.n_echoes == 3 and run.echo_times == (0.005, 0.01, 0.015)
    assert run.phase == (str(files["phase"][0]),) and run.magnitude == (str(files["mag"][0]),)


@pytest.mark.parametrize("te", [0.005, [0.005, 0.01]])
def test_4d_needs_echo_time_list_of_right_length(tmp_path, te):
    root, files = base_tree(tmp_path, echoes=3, four_d=True, sidecar={"EchoTime": te})
    refused(65, str(files["phase"][0]), "EchoTime as a list of 3 values", bids_dir=root)


def test_4d_scalar_echo_time_overridden(tmp_path):
    root, _ = base_tree(tmp_path, echoes=3, four_d=True, sidecar={"EchoTime": 0.005})
    (run,) = collect_runs(root, echo_times=(0.004, 0.008, 0.012))
    assert run.echo_times == (0.004, 0.008, 0.012)


def test_single_echo_t2starw_phase_only(tmp_path):
    root, files = base_tree(tmp_path, suffix="T2starw", echoes=1, echo_entity=False, magnitude=False,
                            tes=[0.02])
    (run,) = collect_runs(root, need_magnitude=False)
    assert run.entities == {"subject": "01", "suffix": "T2starw"}
    assert run.phase == (str(files["phase"][0]),) and run.magnitude == ()
    assert run.echo_times == (0.02,) and run.n_echoes == 1


def test_echo_times_override(tmp_path):
    root, _ = base_tree(tmp_path)
    (run,) = collect_runs(root, echo_times=[0.003, 0.006])
    assert run.echo_times == (0.003, 0.006)


def test_echo_times_override_count_mismatch(tmp_path):
    root, files = base_tree(tmp_path)
    refused(65, str(files["phase"][0]), "--echo-times gives 3 values for 2 echoes", bids_dir=root,
            echo_times=(0.003, 0.006, 0.009))


def test_field_strength_from_imaging_frequency(tmp_path):
    root, _ = base_tree(tmp_path, sidecar={"MagneticFieldStrength": None, "ImagingFrequency": 297.0})
    (run,) = collect_runs(root)
    assert run.field_strength == pytest.approx(297.0 / GAMMA_BAR_MHZ_T)
    assert run.field_strength == pytest.approx(6.9755, abs=1e-3)
    assert len(run.warnings) == 1 and "ImagingFrequency" in run.warnings[0] and "6.976 T" in run.warnings[0]


def test_field_strength_override(tmp_path):
    root, _ = base_tree(tmp_path, sidecar={"MagneticFieldStrength": 3.0})
    (run,) = collect_runs(root, field_strength=7.0)
    assert run.field_strength == 7.0 and run.warnings == ()
    root2, _ = base_tree(tmp_path / "b", sidecar={"MagneticFieldStrength": None})
    assert collect_runs(root2, field_strength=1.5)[0].field_strength == 1.5


@pytest.mark.parametrize("units, expected", [("rad", "rad"), ("arbitrary", "arbitrary"), (None, None)])
def test_phase_units_from_sidecar(tmp_path, units, expected):
    root, _ = base_tree(tmp_path, sidecar={"Units": units})
    assert collect_runs(root)[0].phase_units == expected


def inherited_tree(tmp_path: Path, layout: str) -> Path:
    """Per-echo sidecars reduced to the minimum; the rest inherited from dataset-level files.

    Both layouts pass bids-validator-deno 2.x (checked by hand: a dataset-level ``MEGRE.json`` together with
    ``echo-<i>_MEGRE.json`` is refused as MULTIPLE_INHERITABLE_FILES, so they are not combined).
    """
    root, files = base_tree(tmp_path)
    for part in ("phase", "mag"):
        for e, nii in enumerate(files[part], start=1):
            side = nii.with_name(nii.name.replace(".nii.gz", ".json"))
            doc = {"Units": "rad"} if part == "phase" else {}
            if layout == "dataset_megre":
                doc["EchoTime"] = 0.004 * e
            write_json(side, doc)
    if layout == "dataset_megre":
        write_json(root / "MEGRE.json", {"MagneticFieldStrength": 7.0})
    else:
        for e in (1, 2):
            write_json(root / f"echo-{e}_MEGRE.json", {"EchoTime": 0.004 * e, "MagneticFieldStrength": 7.0})
    return root


@pytest.mark.parametrize("layout", ["dataset_megre", "dataset_echo"])
def test_sidecar_inheritance_from_dataset_level(tmp_path, layout):
    (run,) = collect_runs(inherited_tree(tmp_path, layout))
    assert run.echo_times == (0.004, 0.008)
    assert run.field_strength == 7.0 and run.phase_units == "rad"


def test_part_phase_sidecar_inherited_units(tmp_path):
    root, _ = base_tree(tmp_path, sidecar={"Units": None})
    write_json(root / "part-phase_MEGRE.json", {"Units": "arbitrary"})
    assert collect_runs(root)[0].phase_units == "arbitrary"


# ------------------------------------------------------------------------------------------------------------
# ground truth
# ------------------------------------------------------------------------------------------------------------
def test_ground_truth_found_for_sim(sim_bids):
    (run,) = collect_runs(sim_bids)
    assert run.entities == {"subject": "01"} and run.n_echoes == 3 and run.field_strength == 3.0
    truth = Path(sim_bids) / SIM_TRUTH
    assert run.truth == {"chimap": str(truth / "sub-01_Chimap.nii.gz"),
                         "mask": str(truth / "sub-01_desc-brain_mask.nii.gz"),
                         "dseg": str(truth / "sub-01_dseg.nii.gz"), "dseg_tsv": str(truth / "sub-01_dseg.tsv")}
    assert all(Path(p).is_file() for p in run.truth.values())


def test_ground_truth_absent_and_elsewhere(sim_bids, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(sim_bids, ds, ignore=shutil.ignore_patterns("derivatives"))
    assert collect_runs(ds, check_data=False)[0].truth == {}
    elsewhere = tmp_path / "truth"
    shutil.copytree(Path(sim_bids) / "derivatives" / "qsmbids-sim", elsewhere)
    truth = collect_runs(ds, ground_truth_dir=elsewhere, check_data=False)[0].truth
    assert set(truth) == {"chimap", "mask", "dseg", "dseg_tsv"}
    assert all(p.startswith(str(elsewhere)) for p in truth.values())


def test_ground_truth_for_needs_chimap_and_mask_and_keeps_session(tmp_path):
    folder = tmp_path / "sub-01" / "ses-2" / "anat"
    folder.mkdir(parents=True)
    (folder / "sub-01_ses-2_run-1_Chimap.nii.gz").write_bytes(b"")
    ents = {"subject": "01", "session": "2", "run": "1"}
    assert ground_truth_for(tmp_path, ents) == {}  # no mask
    (folder / "sub-01_ses-2_run-1_desc-brain_mask.nii.gz").write_bytes(b"")
    assert ground_truth_for(tmp_path, ents) == {
        "chimap": str(folder / "sub-01_ses-2_run-1_Chimap.nii.gz"),
        "mask": str(folder / "sub-01_ses-2_run-1_desc-brain_mask.nii.gz")}
    assert ground_truth_for(tmp_path, {"subject": "01", "session": "2"}) == {}


# ------------------------------------------------------------------------------------------------------------
# refusals not reached by tests/cli/test_run_errors.py
# ------------------------------------------------------------------------------------------------------------
def test_bids_root_is_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(InputError) as info:
        check_bids_root(f)
    assert info.value.code == 66 and str(f) in str(info.value) and "not a folder" in str(info.value)


def test_dataset_description_not_json(tmp_path):
    root, _ = base_tree(tmp_path)
    (root / "dataset_description.json").write_text("{not json")
    refused(16, str(root / "dataset_description.json"), "not valid JSON", bids_dir=root)


def test_pybids_cannot_index(tmp_path, monkeypatch):
    import bids.layout

    def broken(*args, **kwargs):
        raise RuntimeError("database is locked")

    root, _ = base_tree(tmp_path)
    monkeypatch.setattr(bids.layout, "BIDSLayout", broken)
    refused(16, str(root), "pybids cannot index", "database is locked", bids_dir=root)


def test_validator_missing(tmp_path, monkeypatch):
    import qsmbids.utils.bids as ub

    monkeypatch.setattr(ub.shutil, "which", lambda name: None)
    with pytest.raises(InputError) as info:
        validate_bids(tmp_path)
    assert info.value.code == 16 and "bids-validator-deno is not installed" in str(info.value)


def test_validator_output_not_json(tmp_path, monkeypatch):
    import qsmbids.utils.bids as ub

    fake = tmp_path / "fake-validator"
    fake.write_text("#!/bin/sh\necho 'deno: cannot allocate memory' >&2\nexit 3\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(ub.shutil, "which", lambda name: str(fake))
    with pytest.raises(InputError) as info:
        validate_bids(tmp_path)
    assert info.value.code == 16
    assert str(tmp_path) in str(info.value) and "cannot allocate memory" in str(info.value)


def test_3d_and_4d_phase_mixed(tmp_path):
    root, files = base_tree(tmp_path)
    stray = files["phase"][0].with_name("sub-01_part-phase_MEGRE.nii.gz")
    write_nii(stray, np.ones((*SHAPE, 2), np.float32))
    err = refused(65, "not all have an echo- entity", bids_dir=root)
    assert "sub-01_" in str(err) and "part-phase_MEGRE.nii.gz" in str(err)


@pytest.mark.parametrize("bad_shape", [(8, 8), (8, 8, 8, 2), (8, 8, 8, 1, 2)])
def test_per_echo_image_not_3d(tmp_path, bad_shape):
    root, files = base_tree(tmp_path)
    write_nii(files["phase"][1], np.ones(bad_shape, np.float32))
    refused(65, str(files["phase"][1]), "expected a 3-D image per echo", bids_dir=root)


def test_single_slice(tmp_path):
    root, files = base_tree(tmp_path, shape=(8, 8, 1))
    refused(65, str(files["phase"][0]), "single-slice", bids_dir=root)


@pytest.mark.parametrize("te", [-0.005, 0, "5 ms", True, [0.005]])
def test_echo_time_not_a_positive_number(tmp_path, te):
    root, files = base_tree(tmp_path)
    side = files["phase"][1].with_name(files["phase"][1].name.replace(".nii.gz", ".json"))
    write_json(side, {**json.loads(side.read_text()), "EchoTime": te})
    refused(65, str(side), "EchoTime must be a positive number", bids_dir=root)


@pytest.mark.parametrize("tes", [[0.01, 0.005], [0.005, 0.005]])
def test_echo_times_not_increasing(tmp_path, tes):
    root, files = base_tree(tmp_path, tes=tes)
    refused(65, str(files["phase"][0]).replace(".nii.gz", ".json"), "not increasing", bids_dir=root)


@pytest.mark.parametrize("b0", [3000, 0, -3.0, "3T"])
def test_field_strength_not_tesla(tmp_path, b0):
    root, files = base_tree(tmp_path, sidecar={"MagneticFieldStrength": b0})
    refused(65, str(files["phase"][0]).replace(".nii.gz", ".json"), "not a field strength in tesla", bids_dir=root)


BAD_NUMBERS = [  # (field, value, message after "<sidecar>: "); a JSON null of a plain field is as good as missing
    ("EchoTime", -0.004, "EchoTime must be a positive number of seconds, got -0.004"),
    ("EchoTime", "n/a", 'EchoTime must be a positive number of seconds, got "n/a"'),
    ("EchoTime", float("nan"), "EchoTime must be a positive number of seconds, got NaN"),
    ("EchoTime", False, "EchoTime must be a positive number of seconds, got false (a JSON boolean"),
    ("EchoTime", 12, "EchoTime 12 looks like milliseconds; BIDS wants seconds"),
    ("MagneticFieldStrength", True, "MagneticFieldStrength true is not a field strength in tesla (a JSON boolean"),
    ("MagneticFieldStrength", "3T", 'MagneticFieldStrength "3T" is not a field strength in tesla'),
    ("MagneticFieldStrength", [3.0], "MagneticFieldStrength [3.0] is not a field strength in tesla"),
    ("ImagingFrequency", "n/a", 'ImagingFrequency "n/a" is not an imaging frequency in MHz'),
    ("ImagingFrequency", False, "ImagingFrequency false is not an imaging frequency in MHz (a JSON boolean"),
    ("ImagingFrequency", -127.7, "ImagingFrequency -127.7 is not an imaging frequency in MHz"),
    ("ImagingFrequency", 127732436, "ImagingFrequency 127732436 looks like Hz; BIDS wants MHz"),
]


@pytest.mark.parametrize("four_d", [False, True], ids=["per-echo", "4-D"])
@pytest.mark.parametrize(("name", "value", "needle"), BAD_NUMBERS, ids=[f"{n}={v!r}" for n, v, _ in BAD_NUMBERS])
def test_every_sidecar_number_is_checked_alike(tmp_path, four_d, name, value, needle):
    """One check for every sidecar number, on both the per-echo and the 4-D paths: 65, the sidecar and the field
    named (in the 4-D form an echo time is one entry of the list, named by its echo; a null there is refused too)."""
    root, files = base_tree(tmp_path, echoes=2, four_d=four_d)
    side = files["phase"][-1].with_name(files["phase"][-1].name.replace(".nii.gz", ".json"))
    doc = json.loads(side.read_text())
    if name == "EchoTime" and four_d:
        doc["EchoTime"] = [doc["EchoTime"][0], value]
        needle = needle.replace("EchoTime 12", "EchoTime of echo 2 (12)").replace("EchoTime must",
                                                                                   "EchoTime of echo 2 must")
    else:
        doc[name] = value
    side.write_text(json.dumps(doc))
    refused(65, f"{side}: {needle}", bids_dir=root)


def test_null_in_a_4d_echo_time_list(tmp_path):
    root, files = base_tree(tmp_path, echoes=3, four_d=True, sidecar={"EchoTime": [0.004, None, 0.012]})
    side = str(files["phase"][0]).replace(".nii.gz", ".json")
    refused(65, f"{side}: EchoTime of echo 2 must be a positive number of seconds, got null", bids_dir=root)


def test_overridden_sidecar_numbers_are_not_needed(tmp_path):
    """--echo-times and --field-strength replace the sidecars' values, so bad ones there do not matter."""
    root, _ = base_tree(tmp_path, sidecar={"EchoTime": "n/a", "MagneticFieldStrength": True,
                                           "ImagingFrequency": "n/a"})
    (run,) = collect_runs(root, echo_times=(0.004, 0.008), field_strength=3.0)
    assert run.echo_times == (0.004, 0.008) and run.field_strength == 3.0 and run.warnings == ()


@pytest.mark.parametrize(("freq", "warned"), [(123.2, False), (127.7, False), (63.87, True), (297.2, True)])
def test_field_strength_and_frequency_disagreeing_is_a_warning(tmp_path, freq, warned):
    """A "3 T" magnet may run at 2.89 T (123.2 MHz): within 5 % no warning; 1.5 T or 7 T worth of frequency is."""
    root, _ = base_tree(tmp_path, sidecar={"MagneticFieldStrength": 3.0, "ImagingFrequency": freq})
    (run,) = collect_runs(root)
    assert run.field_strength == 3.0
    hits = [w for w in run.warnings if "MagneticFieldStrength 3 T and ImagingFrequency" in w]
    assert len(hits) == int(warned), run.warnings


def test_some_nan_phase_is_accepted(tmp_path):
    """Up to half of the phase voxels may be NaN (masked out later); more is refused (CLI test)."""
    root, files = base_tree(tmp_path)
    img = nib.load(files["phase"][0])
    data = np.asanyarray(img.dataobj).copy()
    data[:3] = np.nan  # 3/8 of the voxels
    write_nii(files["phase"][0], data)
    (run,) = collect_runs(root)
    assert run.n_echoes == 2


def test_check_data_off_skips_voxel_checks(tmp_path):
    root, files = base_tree(tmp_path)
    write_nii(files["phase"][0], np.zeros(SHAPE, np.float32))
    assert collect_runs(root, check_data=False)[0].n_echoes == 2
    refused(65, str(files["phase"][0]), "all voxels are zero", bids_dir=root)


# ------------------------------------------------------------------------------------------------------------
# part-real / part-imag (GE-style complex export)
# ------------------------------------------------------------------------------------------------------------
def _real_imag_run(root: Path, *, echoes: int = 3, imag: bool = True, with_phase: bool = False) -> None:
    rng = np.random.default_rng(5)
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    for e in range(echoes):
        z = rng.uniform(1, 2, SHAPE) * np.exp(1j * rng.uniform(-np.pi, np.pi, SHAPE))
        parts = {"real": z.real} | ({"imag": z.imag} if imag else {})
        if with_phase:
            parts |= {"phase": np.angle(z), "mag": np.abs(z)}
        for part, data in parts.items():
            stem = anat / f"sub-01_echo-{e + 1}_part-{part}_MEGRE"
            write_nii(Path(f"{stem}.nii.gz"), data.astype(np.float32))
            write_json(Path(f"{stem}.json"), {"EchoTime": 0.005 * (e + 1), "MagneticFieldStrength": 3.0})


def test_real_imag_run_found(tmp_path):
    root = make_dataset(tmp_path / "ds")
    _real_imag_run(root)
    (run,) = collect_runs(root)
    assert run.representation == "real-imag" and run.n_echoes == 3
    assert all("part-real" in p for p in run.phase) and all("part-imag" in p for p in run.magnitude)
    assert run.phase_units is None


def test_real_without_imag_refused(tmp_path):
    root = make_dataset(tmp_path / "ds")
    _real_imag_run(root, imag=False)
    refused(65, "no matching part-imag", bids_dir=root)


def test_phase_preferred_over_real_imag(tmp_path):
    root = make_dataset(tmp_path / "ds")
    _real_imag_run(root, with_phase=True)
    (run,) = collect_runs(root)
    assert run.representation == "mag-phase" and all("part-phase" in p for p in run.phase)
