"""The built image, run as users run it (``-m container``; CI builds the image first and names it in
``QSMBIDS_IMAGE``): read-only root, an arbitrary user, the BIDS folder bound read-only, participant and group
level on a simulated dataset; the same exit codes as outside for missing bind mounts and an unwritable output; and
Singularity.def converted to a Dockerfile with spython and built on top of the image.

``QSMBIDS_CONTAINER_ENGINE`` names the engine (default ``podman``; ``docker`` works the same)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("QSMBIDS_IMAGE", "")
ENGINE = os.environ.get("QSMBIDS_CONTAINER_ENGINE", "podman")
UID = "12345:12345"  # a user the image has never heard of


@pytest.fixture(scope="module", autouse=True)
def _engine():
    if not IMAGE:
        pytest.skip("QSMBIDS_IMAGE is not set (CI builds the image first: .ci/run)")
    if shutil.which(ENGINE) is None:
        pytest.skip(f"{ENGINE} is not installed")


def run(*args: str, volumes=(), user: str = UID, timeout: int = 1200, image: str = IMAGE, entrypoint=None):
    cmd = [ENGINE, "run", "--rm", "--read-only", "--tmpfs", "/tmp:rw,mode=1777", "-u", user]
    for host, inside, mode in volumes:
        cmd += ["-v", f"{host}:{inside}:{mode}"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    t0 = time.perf_counter()
    res = subprocess.run([*cmd, image, *args], capture_output=True, text=True, timeout=timeout)
    res.seconds = time.perf_counter() - t0
    return res


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        st = p.stat()
        h.update(f"{p.relative_to(root)}:{st.st_mode}:{st.st_mtime_ns}".encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from qsmbids.cli.sim import main as sim_main

    root = tmp_path_factory.mktemp("ctr")
    ds = root / "bids"
    assert sim_main([str(ds), "--preset", "test", "--subjects", "2", "--seed", "5"]) == 0
    for d in (root / "out", root / "work"):
        d.mkdir()
        d.chmod(0o777)  # writable by the container's arbitrary user
    before = tree_digest(ds)
    vols = [(ds, "/data", "ro"), (root / "out", "/out", "rw"), (root / "work", "/work", "rw")]
    part = run("/data", "/out", "participant", "-w", "/work", "--nprocs", "2", volumes=vols)
    group = run("/data", "/out", "group", volumes=vols)
    timing = {"participant_s": round(part.seconds, 1), "group_s": round(group.seconds, 1)}
    print(f"\ncontainer smoke test: {json.dumps(timing)}")
    results = Path(os.environ.get("QSMBIDS_CONTAINER_TIMING", root / "timing.json"))
    results.write_text(json.dumps(timing) + "\n")
    return {"root": root, "ds": ds, "out": root / "out", "part": part, "group": group, "before": before}


def test_version_and_labels():
    res = run("--version")
    assert res.returncode == 0 and res.stdout.startswith("qsmbids "), res.stderr
    info = json.loads(subprocess.run([ENGINE, "image", "inspect", IMAGE], capture_output=True, text=True,
                                     check=True).stdout)[0]
    labels = info.get("Config", {}).get("Labels") or info.get("Labels") or {}
    assert labels["org.opencontainers.image.version"] == res.stdout.split()[1]
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert info["Config"]["Entrypoint"] == ["qsmbids"]


def test_participant_level_read_only_as_any_user(study):
    part, out = study["part"], study["out"]
    assert part.returncode == 0, part.stderr[-3000:]
    assert "Traceback" not in part.stderr
    for sub in ("01", "02"):
        anat = out / f"sub-{sub}" / "anat"
        for name in ("Chimap", "desc-brain_mask", "R2starmap", "desc-HarvardOxford_dseg", "seg-HarvardOxford_stats"):
            assert list(anat.glob(f"sub-{sub}_*{name}.*")), f"sub-{sub}: no {name} output"
        assert (out / f"sub-{sub}.html").is_file()
        owner = (anat / f"sub-{sub}_Chimap.nii.gz").stat()
        assert (owner.st_uid, owner.st_gid) == (12345, 12345)
    desc = json.loads((out / "dataset_description.json").read_text())
    container = desc["GeneratedBy"][0]["Container"]
    assert container["Type"] == "docker" and container["Tag"]
    assert tree_digest(study["ds"]) == study["before"], "the input dataset was modified"


def test_group_level(study):
    group, out = study["group"], study["out"]
    assert group.returncode == 0, group.stderr[-3000:]
    rows = [line.split("\t") for line in (out / "group" / "roi_summary.tsv").read_text().splitlines()]
    assert rows[0][0] == "participant" and {r[0] for r in rows[1:]} == {"01", "02"} and len(rows) > 10
    assert (out / "group.html").is_file()


@pytest.mark.parametrize("case", ["no_data_mount", "no_output_mount", "read_only_output"])
def test_missing_mounts_give_the_exit_codes_of_a_native_run(tmp_path, study, case):
    """The same refusal inside as outside: 66 for a missing BIDS folder, 73 for an output that cannot be
    written, one line naming the folder, no traceback."""
    from qsmbids.cli.run import _main

    ds = study["ds"]
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    if case == "no_data_mount":
        vols, code, word = [(out, "/out", "rw")], 66, "/data"
        native = _main([str(tmp_path / "data"), str(out), "participant", "-w", str(tmp_path / "w")])
    elif case == "no_output_mount":
        vols, code, word = [(ds, "/data", "ro")], 73, "/out"
        native = None  # a folder under / that cannot be created: root-owned, read-only
    else:
        vols, code, word = [(ds, "/data", "ro"), (out, "/out", "ro")], 73, "/out"
        native = None
    res = run("/data", "/out", "participant", "-w", "/tmp/work", "--skip-bids-validation", volumes=vols)
    assert res.returncode == code, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qsmbids: error: ") and word in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    if native is not None:
        assert native == code
    assert list(out.iterdir()) == []


def test_singularity_recipe_builds_on_the_image(tmp_path):
    """Singularity.def → Dockerfile (spython) → image FROM this one; its %test and %runscript work."""
    from spython.main.parse.parsers import SingularityParser
    from spython.main.parse.writers import DockerWriter

    recipes = SingularityParser(str(ROOT / "Singularity.def")).recipe
    base = next(iter(recipes.values())).fromHeader
    docker = DockerWriter(recipes).convert()
    # spython (0.3.14) writes %test as "HEALTHCHECK /bin/bash /tests.sh", without the CMD that Dockerfile syntax
    # needs, and buildah refuses it; a batch app has no health to poll anyway, so the line goes and /tests.sh (the
    # %test section) is run explicitly below
    docker = "\n".join(ln for ln in docker.splitlines() if not ln.startswith("HEALTHCHECK ")) + "\n"
    (tmp_path / "Dockerfile").write_text(docker)
    subprocess.run([ENGINE, "tag", IMAGE, f"docker.io/{base}"], check=True)
    tag = "localhost/qsmbids-singularity:test"
    t0 = time.perf_counter()
    build = subprocess.run([ENGINE, "build", "--pull=never", "-t", tag, str(tmp_path)], capture_output=True,
                           text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    print(f"\nsingularity-derived image built in {time.perf_counter() - t0:.1f} s")
    try:
        test = run("/tests.sh", image=tag, entrypoint="/bin/bash")  # %test
        assert test.returncode == 0 and test.stdout.startswith("qsmbids "), test.stderr
        runscript = run("-c", 'exec qsmbids "$@"', "runscript", "--version", image=tag, entrypoint="/bin/sh")
        assert runscript.returncode == 0 and runscript.stdout == test.stdout
        env = run("-c", "echo $QSMBIDS_CONTAINER_TYPE", image=tag, entrypoint="/bin/sh")
        assert env.stdout.strip() == "singularity"
    finally:
        subprocess.run([ENGINE, "rmi", "-f", tag, f"docker.io/{base}"], capture_output=True)
