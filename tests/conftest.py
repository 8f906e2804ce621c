"""Shared fixtures. Plugin tests pip-install real distributions into a private target directory and run
``headreg`` in a subprocess with that directory on PYTHONPATH, so the test environment itself is untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["headreg.testing"]

REPO = Path(__file__).resolve().parents[1]
_SESSION_DIRS: dict[str, Path] = {}
_FACTORY: list[pytest.TempPathFactory] = []


@pytest.fixture(scope="session", autouse=True)
def _session_tmp_path_factory(tmp_path_factory):
    """Lets module-level helpers (bundle caches) write under pytest's tmp dir, never straight into /tmp."""
    _FACTORY.append(tmp_path_factory)
    yield
    _FACTORY.clear()


def session_dir(name: str) -> Path:
    """One directory per name and test session, under pytest's basetemp (pytest prunes old ones)."""
    if name not in _SESSION_DIRS:
        if not _FACTORY:
            raise RuntimeError("session_dir() is for use inside a pytest session")
        _SESSION_DIRS[name] = _FACTORY[0].mktemp(name)
    return _SESSION_DIRS[name]


def write_plugin(root: Path, dist: str, module: str, body: str, *, entry_name: str | None = None,
                 requires: tuple[str, ...] = (), version: str = "0.1.0") -> Path:
    """Write a minimal plugin project (pyproject + one module) and return its directory."""
    project = root / dist
    (project / module).mkdir(parents=True, exist_ok=True)
    deps = ", ".join(json.dumps(r) for r in requires)
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "{version}"
        dependencies = [{deps}]

        [project.entry-points.headreg]
        {entry_name or module} = "{module}"

        [tool.setuptools]
        packages = ["{module}"]
    """))
    (project / module / "__init__.py").write_text(textwrap.dedent(body))
    return project


def pip_install(target: Path, *projects: Path) -> None:
    """A real pip install (no deps, no build isolation: offline-safe and quick) into ``target``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(target), *map(str, projects)],
        check=True, capture_output=True, text=True,
    )


def run_headreg(*args: str, site: Path | None = None, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real ``headreg`` command in a subprocess, optionally with an extra site directory."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HEADREG_")}
    if site is not None:
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), full_env.get("PYTHONPATH")]))
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "headreg.cli", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )


@pytest.fixture
def plugin_site(tmp_path: Path):
    """``install(*projects)`` pip-installs plugin projects into a fresh site dir and returns that dir."""
    site = tmp_path / "site"
    site.mkdir()

    def install(*projects: Path) -> Path:
        pip_install(site, *projects)
        return site

    return install


MULTI_HEADS = {
    "sentiment": ("seq_cls", {"num_labels": 3, "id2label": {0: "neg", 1: "neu", 2: "pos"}}),
    "entities": ("token_cls", {"num_labels": 5, "id2label": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}}),
}


@pytest.fixture(scope="session")
def multi_head_bundle(tmp_path_factory) -> Path:
    """A tiny two-head bundle (``sentiment``: seq_cls, ``entities``: token_cls), exported once per session."""
    from headreg import attach_heads
    from headreg.export import ExportOptions, export_onnx
    from headreg.testing import load_tokenizer, single_torch_thread, tiny_backbone

    out = tmp_path_factory.mktemp("multi-head") / "bundle"
    with single_torch_thread():
        model = attach_heads(tiny_backbone("bert"), MULTI_HEADS).eval()
        export_onnx(model, out, load_tokenizer(), options=ExportOptions(exporter="torchscript"))
    return out
