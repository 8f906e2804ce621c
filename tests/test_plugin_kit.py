"""The plugin author's side: the template copied under a new name, and what the kit says about broken plugins.

Every plugin here is a real distribution pip-installed into a private site directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, pip_install, run_headreg, write_plugin
from headreg import __version__, attach_head, get_head, list_heads, plugins
from headreg.errors import HeadImportError
from headreg.testing import HeadCheckError, check_head, check_postprocess_torch_free, tiny_backbone

pytestmark = pytest.mark.slow  # pip installs the repo's plugins and a renamed template copy

TEMPLATE = REPO / "plugins" / "template"

BAD_HEADS = """
from headreg import hookimpl

@hookimpl
def register_heads(register):
    register(name="ghost_head", cls="bad_heads.missing:GhostHead", task="custom")
    register(name="torchy_head", cls="bad_heads.heads:TorchyHead", postprocess="bad_heads.torchy_post:post",
             task="sequence-classification")
    register(name="stuck_head", cls="bad_heads.heads:StuckHead", task="sequence-classification")
"""
BAD_HEAD_CLASSES = """
from headreg.heads.seq_cls import SeqClsHead


class TorchyHead(SeqClsHead):
    pass


class StuckHead(SeqClsHead):
    def loss(self, logits, labels, attention_mask):
        return (logits * 0).sum() + 1.0  # a loss that cannot teach the head anything
"""
TORCHY_POSTPROCESS = """
import torch  # the mistake: the runtime serves bundles where torch is not installed


def post(outputs, context):
    return [{} for _ in outputs["logits"]]
"""
FUTURE_HOOK = """
from headreg import hookimpl

@hookimpl
def register_heads(register, register_postprocessor):
    register(name="future_head", cls="x.y:Z", task="custom")
"""


@pytest.fixture(scope="module")
def bad_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-plugins")
    bad = write_plugin(root, "headreg-plugin-badheads", "bad_heads", BAD_HEADS, version="0.3.0")
    (bad / "bad_heads" / "heads.py").write_text(textwrap.dedent(BAD_HEAD_CLASSES))
    (bad / "bad_heads" / "torchy_post.py").write_text(textwrap.dedent(TORCHY_POSTPROCESS))
    future = write_plugin(root, "headreg-plugin-fromthefuture", "future_heads", FUTURE_HOOK, version="2.0.0",
                          requires=("headreg>=9.0",))
    site = root / "site"
    pip_install(site, bad, future)
    return site


@pytest.fixture
def use_site(monkeypatch):
    """Load plugins from an extra site directory in this process; forget them afterwards."""
    added: list[Path] = []

    def use(site: Path) -> None:
        monkeypatch.syspath_prepend(str(site))
        added.append(site)
        plugins.reset()

    yield use
    plugins.reset()
    for name, module in list(sys.modules.items()):
        if any(str(getattr(module, "__file__", "") or "").startswith(str(site)) for site in added):
            del sys.modules[name]


def test_repo_plugins_install_from_their_folders_and_list_with_distribution_and_version(tmp_path):
    """A real (non-editable) pip install of plugins/headreg-plugin-*: what users and CI get."""
    site = tmp_path / "site"
    pip_install(site, REPO / "plugins" / "headreg-plugin-crf", REPO / "plugins" / "headreg-plugin-ordinal")
    heads = {h["name"]: h for h in json.loads(run_headreg("heads", "--json", site=site).stdout)}
    assert (heads["crf"]["plugin"], heads["crf"]["version"], heads["crf"]["level"]) == ("headreg-plugin-crf", "0.1.0", "token")
    assert (heads["ordinal"]["plugin"], heads["ordinal"]["version"]) == ("headreg-plugin-ordinal", "0.1.0")
    # The installed copies are complete and are the ones imported (the site comes first on the path).
    probe = (
        "import json, headreg_plugin_crf.postprocess as c, headreg_plugin_ordinal.postprocess as o; "
        "print(json.dumps([c.__file__, o.__file__]))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    for postprocess in map(Path, json.loads(done.stdout)):
        assert postprocess.is_relative_to(site) and (postprocess.parent / "head.py").is_file()


def test_template_copied_under_a_new_name_is_a_working_plugin(tmp_path):
    """What a plugin author does: copy the template, rename it, install it, see the head, run its tests."""
    project = tmp_path / "headreg-plugin-acme"
    shutil.copytree(TEMPLATE, project, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    for path in sorted(project.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file():
            path.write_text(path.read_text().replace("template", "acme").replace("Template", "Acme"))
        if "template" in path.name:
            path.rename(path.with_name(path.name.replace("template", "acme")))
    site = tmp_path / "site"
    pip_install(site, project)

    heads = {h["name"]: h for h in json.loads(run_headreg("heads", "--json", site=site).stdout)}
    assert heads["acme_head"]["plugin"] == "headreg-plugin-acme"
    assert heads["acme_head"]["version"] == "0.1.0"
    assert heads["acme_head"]["postprocess"] == "headreg_plugin_acme.postprocess:acme_head"
    assert not any("template" in name for name in heads)

    # The copy's own tests, run the way its author would: pytest in the project, the kit as a pytest plugin.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADREG_")}
    env["PYTHONPATH"] = str(site)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project, capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.search(r"\b3 passed\b", done.stdout), done.stdout[-1000:]


def test_head_whose_class_does_not_import_is_listed_and_the_kit_names_its_plugin(bad_site, use_site):
    use_site(bad_site)
    assert get_head("ghost_head").plugin == "headreg-plugin-badheads"
    assert "ghost_head" in [spec.name for spec in list_heads()]
    with pytest.raises(HeadImportError, match=r"ghost_head.*headreg-plugin-badheads 0\.3\.0.*bad_heads\.missing"):
        attach_head(tiny_backbone("bert"), "ghost_head")
    with pytest.raises(HeadCheckError, match=r"check_head\('ghost_head'\) on bert: attach: .*headreg-plugin-badheads"):
        check_head("ghost_head", architectures=("bert",), export=())
    # The command line still lists everything, the broken head included.
    listed = run_headreg("heads", site=bad_site)
    assert listed.returncode == 0 and "ghost_head" in listed.stdout and "seq_cls" in listed.stdout


def test_kit_rejects_a_postprocess_that_imports_torch(bad_site, use_site):
    use_site(bad_site)
    with pytest.raises(HeadCheckError, match=r"torchy_head.*bad_heads\.torchy_post.*imports torch"):
        check_head("torchy_head", architectures=("bert",), export=())
    check_postprocess_torch_free("seq_cls")  # the built-in runtime postprocess passes


def test_kit_catches_a_loss_that_teaches_nothing(bad_site, use_site):
    use_site(bad_site)
    with pytest.raises(HeadCheckError, match=r"stuck_head'\) on bert: forward and backward: no gradient reached"):
        check_head("stuck_head", architectures=("bert",), export=())


def test_plugin_built_against_a_newer_hook_argument_names_itself_and_the_headreg_it_needs(bad_site, use_site):
    use_site(bad_site)
    info = next(i for i in plugins.plugin_infos() if i.distribution == "headreg-plugin-fromthefuture")
    assert info.status == "failed"
    assert info.error == (
        f"PluginError: plugin headreg-plugin-fromthefuture 2.0.0 needs a newer headreg than this one ({__version__}): "
        f"its hooks ask for register_heads(register_postprocessor), which headreg {__version__} does not offer; it "
        "requires headreg>=9.0. Upgrade headreg (pip install -U 'headreg>=9.0') or install an older "
        "headreg-plugin-fromthefuture."
    )
    assert "future_head" not in [spec.name for spec in list_heads()]
    assert get_head("torchy_head").plugin == "headreg-plugin-badheads"  # the other plugin still loaded
