"""The package as a user installs it: one version everywhere, the declared oldest JAX the one make test-oldest-jax
tests, and the wheel, installed into a fresh venv without the repository, runs its doctests and a loss."""

import pathlib
import re
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile

import jaxbce

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_one_version_everywhere():
    version = PYPROJECT["project"]["version"]
    assert jaxbce.__version__ == version
    assert f"## {version}" in (ROOT / "CHANGELOG.md").read_text()


def test_the_declared_oldest_jax_is_the_tested_one():
    oldest = re.search(r"^OLDEST_JAX := (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert sorted(PYPROJECT["project"]["dependencies"]) == [f"jax>={oldest}", f"jaxlib>={oldest}"]
    assert "make test-oldest-jax" in (ROOT / ".ci" / "run").read_text()


def test_wheel_and_sdist_carry_the_license_and_the_wheel_installs_into_a_fresh_venv_and_runs(tmp_path):
    """make dist's two artifacts: each carries the Apache-2.0 text (LICENSE, the repository's) and names it in its
    metadata as PEP 639 says (License-Expression, License-File); the wheel then installs and runs elsewhere."""
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp_path / "dist", ROOT],
        check=True,
        capture_output=True,
    )
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    (wheel,) = (tmp_path / "dist").glob("jaxbce-*.whl")
    (sdist,) = (tmp_path / "dist").glob("jaxbce-*.tar.gz")
    version = PYPROJECT["project"]["version"]
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"jaxbce-{version}.dist-info/METADATA").decode()
        assert archive.read(f"jaxbce-{version}.dist-info/licenses/LICENSE").decode() == license_text
    with tarfile.open(sdist) as archive:
        sdist_metadata = archive.extractfile(f"jaxbce-{version}/PKG-INFO").read().decode()
        assert archive.extractfile(f"jaxbce-{version}/LICENSE").read().decode() == license_text
    for text in (metadata, sdist_metadata):
        assert "License-Expression: Apache-2.0" in text.splitlines()
        assert "License-File: LICENSE" in text.splitlines()
    names = zipfile.ZipFile(wheel).namelist()
    assert "jaxbce/py.typed" in names
    assert "jaxbce/keras.py" in names
    assert not [name for name in names if name.startswith(("tests/", "bench/", "notebooks/"))]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel], check=True
    )
    # The dependencies (jax, jaxlib, pytest for the doctests) come from this environment's site-packages, added
    # as a plain path: its .pth files, among them the editable install of this checkout, are not read.
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (pathlib.Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    run = tmp_path / "elsewhere"
    run.mkdir()
    code = (
        f"import jaxbce, jax.numpy as jnp; assert jaxbce.__file__.startswith({str(venv)!r}), jaxbce.__file__; "
        "print(jaxbce.binary_cross_entropy_with_logits(jnp.array([0.0, 100.0]), jnp.array([1.0, 0.0])))"
    )
    out = subprocess.run([python, "-c", code], cwd=run, check=True, capture_output=True, text=True).stdout
    assert abs(float(out) - 50.346573590279974) < 1e-5  # (log 2 + 100 + log1p(exp(-100))) / 2, float64
    installed = pathlib.Path(site) / "jaxbce"
    doctests = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--doctest-modules", installed],
        cwd=run,
        capture_output=True,
        text=True,
    )
    assert doctests.returncode == 0, doctests.stdout[-3000:]
    assert " passed" in doctests.stdout
