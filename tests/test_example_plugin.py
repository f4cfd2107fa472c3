"""The example third-party plugin (``plugins/example-feature-map``), really installed.

The package is built and installed with pip into a temporary folder, then used by fresh Python
processes that have that folder on ``PYTHONPATH``, as a user's environment would: tngraph finds
the ``rbf`` feature map only through the installed distribution's entry point.

A second folder holds a hand-written installed distribution whose entry point fails on import.
``tests/test_plugins.py`` checks the registry's handling of failing entry points in-process with
stand-in entry points; here the same rule is checked end to end, through real metadata, a new
interpreter and the CLI: the broken plugin is listed with its distribution and reason, and the
other plugins, the CLI and specs that do not name it keep working.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "plugins" / "example-feature-map"
DIST, VERSION = "tngraph-example-feature-map", "0.1.0"

#: a 2-site MPS whose data port maps each raw value with rbf (dim 3, default width 1/2)
RBF_SPEC = """\
tngraph: 1
name: rbf_chain
network:
  template: mps
  sites: 2
  phys_dim: 3
  bond_dim: 2
  input: x
  feature_map: {name: rbf, dim: 3}
  output_dim: 2
plan: {dtype: float64}
"""

#: one node fed by a plain port; FEATURE_MAP is replaced per test (line 7 holds it)
PORT_SPEC = """\
tngraph: 1
name: rbf_port
network:
  nodes:
    A: {legs: {p: 3, o: 2}}
  inputs:
    x: {legs: {p: 3}, feature_map: FEATURE_MAP}
  edges: [[x.p, A.p]]
  outputs: [A.o]
"""
FEATURE_MAP_COLUMN = PORT_SPEC.splitlines()[6].index("FEATURE_MAP") + 1

#: run in the subprocess: compile RBF_SPEC, evaluate it, and apply the registered map directly
EVALUATE = """\
import json, sys, torch, tngraph
from tngraph.featuremaps import get_feature_map

module = tngraph.compile(sys.argv[1])
x = torch.tensor([[0.0, 0.25], [0.5, 1.0], [0.8, 0.1]], dtype=torch.float64)
out = module(x)
direct = get_feature_map("rbf").apply(torch.tensor([-0.5, 0.3, 1.5], dtype=torch.float64),
                                      {"dim": 4, "width": 0.2, "scale": True})
print(json.dumps({"x": x.tolist(), "out": out.tolist(), "dtype": str(out.dtype),
                  "A0": module.tensors["A0"].tolist(), "A1": module.tensors["A1"].tolist(),
                  "direct": direct.tolist()}))
"""


def _installed(distribution: str) -> bool:
    """Whether ``distribution`` is installed (read from metadata: importing or even finding
    ``pip`` would make setuptools' distutils hack warn)."""
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _pip_install(source: Path, target: Path) -> None:
    """``pip install --no-deps --target TARGET SOURCE``, offline when setuptools is at hand."""
    if not _installed("pip"):
        pytest.skip("pip is not installed in this environment; cannot install the plugin")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input",
               "--disable-pip-version-check", "--target", str(target)]
    if _installed("setuptools"):
        # build with this environment's setuptools: no index, no network
        done = subprocess.run([*command, "--no-build-isolation", "--no-index", str(source)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"pip could not install the example plugin:\n{done.stderr}"
        return
    # no setuptools here: pip must fetch it into an isolated build environment
    done = subprocess.run([*command, str(source)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.skip("setuptools is not installed and pip could not fetch it for an isolated "
                    f"build (offline?):\n{done.stderr[-2000:]}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder into which the example plugin is pip-installed (from a copy of its source, so
    the build leaves no ``build/`` or ``*.egg-info`` in the repository)."""
    root = tmp_path_factory.mktemp("example-plugin")
    source = root / "source"
    shutil.copytree(PLUGIN, source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    _pip_install(source, root / "site")
    return root / "site"


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An installed distribution ``broken-fm-plugin 0.2.0`` whose feature map ``bumpy`` points
    to a module that imports a missing dependency."""
    root = tmp_path_factory.mktemp("broken-plugin")
    info = root / "broken_fm_plugin-0.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-fm-plugin\n"
                                   "Version: 0.2.0\n")
    (info / "entry_points.txt").write_text("[tngraph.feature_maps]\n"
                                           "bumpy = broken_fm_plugin:BUMPY\n")
    (root / "broken_fm_plugin.py").write_text("import missing_dependency_of_bumpy\n\n"
                                              "BUMPY = None\n")
    return root


def _python(paths: list[Path], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with only ``paths`` added to its search path (not the repo root)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in paths)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def _cli(paths: list[Path], *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _python(paths, "-m", "tngraph.cli", *argv, cwd=cwd)


def _row(table: str, name: str) -> list[str]:
    """The cells of the ``plugins list`` row of ``name`` (first line of it; cells may wrap)."""
    rows = [line.split() for line in table.splitlines() if line.split()[:1] == [name]]
    assert len(rows) == 1, f"no single row for {name!r} in:\n{table}"
    return rows[0]


def _rbf(x: np.ndarray, dim: int, width: float) -> np.ndarray:
    """The map by hand: exp(-(x - k/(dim-1))^2 / (2 width^2)) for k = 0 .. dim-1."""
    centres = np.array([k / (dim - 1) for k in range(dim)])
    return np.exp(-((x[..., None] - centres) ** 2) / (2 * width**2))


def test_the_plugin_is_not_part_of_tngraphs_own_packages() -> None:
    """tngraph's package discovery (``tngraph*`` under ``.`` or ``plugins``) skips the plugin."""
    with warnings.catch_warnings():    # "Setuptools is replacing distutils" (torch loaded it)
        warnings.simplefilter("ignore")
        setuptools = pytest.importorskip("setuptools", reason="needs setuptools' package finder")
    find_namespace_packages = setuptools.find_namespace_packages
    for where in (ROOT, ROOT / "plugins"):
        found = find_namespace_packages(where=str(where), include=["tngraph*"])
        assert not [p for p in found if "example_feature_map" in p], found


def test_plugins_list_shows_the_installed_plugin(site: Path, tmp_path: Path) -> None:
    done = _cli([site], "plugins", "list", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _row(done.stdout, "rbf") == ["rbf", "feature", "map", DIST, VERSION, "ok"]
    assert _row(done.stdout, "poly")[-1] == "ok"        # the built-ins are still there


def test_a_spec_uses_the_installed_feature_map(site: Path, tmp_path: Path) -> None:
    spec = tmp_path / "rbf.yaml"
    spec.write_text(RBF_SPEC)
    done = _python([site], "-c", EVALUATE, str(spec), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    x, out = np.array(result["x"]), np.array(result["out"])
    assert out.shape == (3, 2) and result["dtype"] == "torch.float64"

    # hand values of the map: dim 3, centres 0, 1/2, 1, default width 1/(dim-1) = 1/2
    phi = _rbf(x, 3, 0.5)
    assert phi[0, 1] == pytest.approx([math.exp(-0.125), math.exp(-0.125), math.exp(-1.125)])
    # the 2-site chain: A0 (p, r), A1 (l, p, o); x[:, k] feeds site k
    a0, a1 = np.array(result["A0"]), np.array(result["A1"])
    expected = np.einsum("bp,bq,pr,rqo->bo", phi[:, 0], phi[:, 1], a0, a1)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)

    # scale: true clamps to [0, 1]; dim 4 and width 0.2 as given
    np.testing.assert_allclose(result["direct"], _rbf(np.array([0.0, 0.3, 1.0]), 4, 0.2),
                               rtol=1e-12)


def test_the_plugins_docstring_examples_hold(site: Path, tmp_path: Path) -> None:
    done = _python([site], "-c", "import doctest, sys, tngraph_example_feature_map as m; "
                   "sys.exit(1 if doctest.testmod(m).failed else 0)", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("feature_map", "message"), [
    ("{name: rbf, dim: 1}", "feature map 'rbf' needs an integer dim >= 2, got 1"),
    ("{name: rbf, dim: true}", "feature map 'rbf' needs an integer dim >= 2, got True"),
    ("{name: rbf, dim: 3, width: 0}", "feature map 'rbf' needs a number width > 0, got 0"),
    ("{name: rbf, widht: 2}", "feature map 'rbf' has no option 'widht'; valid: scale, dim, width"),
    ("{name: rbf, dim: 4}", "feature map 'rbf' makes vectors of dim 4, but leg x.p has dim 3"),
])
def test_bad_options_are_located_validation_errors(site: Path, tmp_path: Path,
                                                    feature_map: str, message: str) -> None:
    spec = tmp_path / "port.yaml"
    spec.write_text(PORT_SPEC.replace("FEATURE_MAP", feature_map))
    done = _cli([site], "validate", str(spec), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"{spec}:7:{FEATURE_MAP_COLUMN}: error: {message}\n"), \
        done.stderr


def test_a_broken_installed_plugin_is_reported_and_the_rest_keep_working(
        site: Path, broken_site: Path, tmp_path: Path) -> None:
    paths = [site, broken_site]
    done = _cli(paths, "plugins", "list", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    bumpy = _row(done.stdout, "bumpy")
    assert bumpy[:5] == ["bumpy", "feature", "map", "broken-fm-plugin", "0.2.0"]
    assert bumpy[5:7] == ["BROKEN:", "ModuleNotFoundError:"]
    assert "missing_dependency_of_bumpy" in done.stdout           # the reason (may wrap)
    assert _row(done.stdout, "rbf")[-1] == "ok"
    assert _row(done.stdout, "mps")[-1] == "ok"

    spec = tmp_path / "port.yaml"
    spec.write_text(PORT_SPEC.replace("FEATURE_MAP", "{name: rbf, dim: 3}"))
    done = _cli(paths, "validate", str(spec), cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith(f"{spec}: ok"), done.stderr

    # naming the broken plugin is a located user error (exit 2) with the reason, no traceback
    spec.write_text(PORT_SPEC.replace("FEATURE_MAP", "bumpy"))
    done = _cli(paths, "validate", str(spec), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert re.match(rf"{re.escape(str(spec))}:7:{FEATURE_MAP_COLUMN}: error: feature map plugin "
                    r"'bumpy' failed to load: ModuleNotFoundError: No module named "
                    r"'missing_dependency_of_bumpy'", done.stderr), done.stderr
