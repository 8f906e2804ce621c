"""Writing bundles and saved models: private staging, what --overwrite may replace, leftovers of killed writers,
full and read-only filesystems, file modes; loading saved models strictly. Real files, real processes, real
signals, a real (tiny) tmpfs where the machine lets us mount one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from headreg import attach_head, load_model
from headreg.atomic import atomic_directory, remove_leftovers
from headreg.cli import cli
from headreg.errors import SaveLoadError
from headreg.testing import tiny_backbone


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def model():
    return attach_head(tiny_backbone(), "seq_cls", num_labels=2)


@pytest.fixture
def saved(model, tmp_path) -> Path:
    from headreg.testing import load_tokenizer

    return model.save_pretrained(tmp_path / "saved", tokenizer=load_tokenizer())


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --- what may be replaced ---------------------------------------------------------------------------------------------


def test_export_overwrite_refuses_a_directory_that_is_not_a_bundle(saved, tmp_path):
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "thesis.tex").write_text("years of work")
    result = invoke("export", str(saved), "-o", str(documents), "--overwrite")
    assert result.exit_code == 2
    assert "is not a headreg bundle" in result.output and "Remove the directory yourself" in result.output
    assert (documents / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("where", ["source", "parent"])
def test_export_never_writes_over_its_own_source_or_a_directory_containing_it(saved, where):
    target = saved if where == "source" else saved.parent
    before = sorted(p.name for p in saved.iterdir())
    result = invoke("export", str(saved), "-o", str(target), "--overwrite")
    assert result.exit_code == 2
    assert "source being written from" in result.output
    assert sorted(p.name for p in saved.iterdir()) == before


def test_save_pretrained_refuses_a_file_and_a_symlink(model, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SaveLoadError, match="not a directory"):
        model.save_pretrained(tmp_path / "file", overwrite=True)
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(SaveLoadError, match="not a directory"):
        model.save_pretrained(tmp_path / "link", overwrite=True)


# --- leftovers of killed writers ----------------------------------------------------------------------------------------


def test_only_our_own_dead_leftovers_are_removed(tmp_path):
    target = tmp_path / "bundle"
    dead = dead_pid()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ours_dead = tmp_path / f".bundle.{dead}.abc123.incoming"
        ours_alive = tmp_path / f".bundle.{alive.pid}.def456.incoming"
        old = tmp_path / f".bundle.{dead}.old"
        not_ours = tmp_path / f".bundle.{dead}.zzz.incoming"
        unrelated = tmp_path / ".bundle.notes"
        for path in (ours_dead, ours_alive, old, not_ours, unrelated):
            path.mkdir()
            (path / "f").write_text("x")
        if os.getuid() == 0:
            os.chown(not_ours, 65534, 65534)  # another user's (only root can give a directory away)
        else:
            shutil.rmtree(not_ours)
        handled = remove_leftovers(target)
        assert ours_dead in handled and not ours_dead.exists()
        assert target.is_dir() and (target / "f").exists(), "the missing target got its .old copy back"
        assert ours_alive.exists() and unrelated.exists()
        if os.getuid() == 0:
            assert not_ours.exists(), "another user's leftovers are never touched"
    finally:
        alive.kill()
        alive.wait()


def _signal_mid_move(tmp_path: Path, signame: str, after: str = "") -> tuple[Path, subprocess.CompletedProcess]:
    """Run atomic_directory over an existing target in a subprocess that signals itself between the renames."""
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "version").write_text("old")
    script = textwrap.dedent(f"""
        import os, signal
        import headreg.atomic as atomic
        real = atomic._exchange

        def exchange(a, b):
            os.kill(os.getpid(), signal.{signame})  # arrives mid-move
            return real(a, b)

        atomic._exchange = exchange
        try:
            with atomic.atomic_directory({str(target)!r}, overwrite=True) as tmp:
                (tmp / "version").write_text("new")
            print("not reached: the signal ends the block after the move")
        except KeyboardInterrupt as exc:
            print("interrupted, written:", getattr(exc, "written", None))
    """)
    return target, subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_sigterm_during_the_final_move_leaves_a_complete_target_and_nothing_else(tmp_path):
    """The swap runs with SIGTERM held back: the signal lands after it, never between two renames."""
    target, result = _signal_mid_move(tmp_path, "SIGTERM")
    assert result.returncode == -15, result.stderr
    assert (target / "version").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_ctrl_c_during_the_final_move_is_delivered_after_it_and_says_the_directory_is_complete(tmp_path):
    target, result = _signal_mid_move(tmp_path, "SIGINT")
    assert result.stdout.strip() == f"interrupted, written: {target}", result.stderr
    assert (target / "version").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_a_signal_to_any_thread_during_the_two_rename_move_lands_after_it(tmp_path):
    """Without atomic exchange the move is two renames; SIGTERM sent to one of several other threads right
    between them must neither kill the process mid-move nor be lost: it lands once the target is in place."""
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "version").write_text("old")
    script = textwrap.dedent(f"""
        import os, signal, threading, time
        from pathlib import Path
        import headreg.atomic as atomic

        stop = threading.Event()
        workers = [threading.Thread(target=stop.wait, daemon=True) for _ in range(6)]  # like onnxruntime's pool
        for worker in workers:
            worker.start()
        atomic._exchange = lambda a, b: False  # a filesystem without renameat2(RENAME_EXCHANGE)
        rename = Path.rename

        def rename_then_signal(self, other):
            done = rename(self, other)
            if str(other).endswith(".old"):  # the first of the two renames: the target is gone right now
                signal.pthread_kill(workers[3].ident, signal.SIGTERM)
                time.sleep(0.5)
            return done

        Path.rename = rename_then_signal
        with atomic.atomic_directory({str(target)!r}, overwrite=True) as tmp:
            (tmp / "version").write_text("new")
        print("not reached: SIGTERM ends the process after the move")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == -15, result.stderr
    assert "not reached" not in result.stdout
    assert (target / "version").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


@pytest.mark.parametrize("owner", ["another user", "this user"])
def test_a_staging_directory_swapped_by_someone_else_is_refused_and_never_published(tmp_path, owner):
    """In a parent others may write to (0777, not sticky) another user can rename our staging directory aside and
    put theirs in its place; the move checks it is still the directory created, owned by us."""
    if owner == "another user" and os.getuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o777)
    target = parent / "bundle"
    with pytest.raises(SaveLoadError, match=r"staging directory .* was replaced by another directory .*nothing was "
                                            r"moved to .*bundle.* sticky bit"):
        with atomic_directory(target, overwrite=False) as tmp:
            assert tmp.stat().st_mode & 0o777 == 0o700
            (tmp / "model.onnx").write_text("ours")
            tmp.rename(parent / "aside")  # what the other user does, between two of our writes
            tmp.mkdir()
            if owner == "another user":
                os.chown(tmp, 65534, 65534)
            (tmp / "model.onnx").write_text("written into their directory")
    assert not target.exists()
    assert (parent / "aside" / "model.onnx").read_text() == "ours"
    assert (tmp / "model.onnx").exists(), "the other directory is left to its owner, not deleted"


# --- full and read-only filesystems -------------------------------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mount = tmp_path / "mnt"
    mount.mkdir()
    if os.getuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root (CI containers run as root; a desktop run does not)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_a_clear_error_and_leaves_nothing(model, tiny_tmpfs):
    with pytest.raises(SaveLoadError, match="no space left on the device.*nothing was written"):
        model.save_pretrained(tiny_tmpfs / "model")
    assert list(tiny_tmpfs.iterdir()) == []


def test_a_read_only_output_parent_fails_before_any_work(saved, tiny_tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    result = invoke("export", str(saved), "-o", str(tiny_tmpfs / "bundle"))
    assert result.exit_code == 2, result.output
    assert "read-only filesystem" in result.output
    assert "✓" not in result.output, "no export step ran"


# --- file modes -----------------------------------------------------------------------------------------------------------


def test_saved_files_get_the_umask_modes(model, tmp_path):
    previous = os.umask(0o022)
    try:
        saved = model.save_pretrained(tmp_path / "m")
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(saved)): p.stat().st_mode & 0o777 for p in saved.rglob("*")}
    assert modes["head.safetensors"] == 0o644 and modes["backbone/model.safetensors"] == 0o644
    assert set(modes.values()) == {0o644, 0o755}, modes
    assert saved.stat().st_mode & 0o777 == 0o755


# --- saved models: strict weights, checked config ------------------------------------------------------------------------


def test_backbone_weights_that_do_not_match_are_an_error_naming_them(saved):
    weights = saved / "backbone" / "model.safetensors"
    state = load_file(weights)
    state["bogus.weight"] = state.pop("embeddings.word_embeddings.weight")
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(SaveLoadError, match=r"missing \(would be randomly initialised\): "
                                            r"embeddings\.word_embeddings\.weight.*unexpected.*bogus\.weight"):
        load_model(saved)
    loaded = load_model(saved, strict=False)  # the explicit opt-out
    assert loaded.head_name == "seq_cls"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda c: c.update(head=5), "head"),
        (lambda c: c["head_config"].update(num_labels=-5), "head_config.num_labels"),
        (lambda c: c["head_config"].update(id2label={"a": "x"}), "head_config.id2label.a"),
        (lambda c: c["head_config"].update(hidden_layers="abc"), "head_config.hidden_layers"),
        (lambda c: c["head_config"].update(hidden_layers=[64, "x"]), "head_config.hidden_layers.1"),
        (lambda c: c["head_config"].update(dropout="high"), "head_config.dropout"),
        (lambda c: c["pooling"].update(strategy="median"), "pooling.strategy"),
        (lambda c: c["pooling"].update(norm_eps="small"), "pooling.norm_eps"),
        (lambda c: c["pooling"].update(extra_field=1), "pooling.extra_field"),
        (lambda c: c.update(backbone="../elsewhere"), "backbone"),
        (lambda c: c.update(format_version="1"), "format_version"),
    ],
)
def test_type_corrupted_saved_config_is_an_error_naming_the_field(saved, change, field):
    config = json.loads((saved / "headreg_model.json").read_text())
    change(config)
    (saved / "headreg_model.json").write_text(json.dumps(config))
    with pytest.raises(SaveLoadError, match=f"field '{field}'"):
        load_model(saved)


def test_duplicate_keys_in_the_saved_config_are_refused(saved):
    text = (saved / "headreg_model.json").read_text()
    (saved / "headreg_model.json").write_text(text.replace('"pooling": {', '"pooling": {"strategy": "max"}, "pooling": {', 1))
    with pytest.raises(SaveLoadError, match="duplicate key 'pooling'"):
        load_model(saved)


def test_atomic_directory_on_a_fresh_target_renames_into_place(tmp_path):
    with atomic_directory(tmp_path / "new", overwrite=False) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".new.{os.getpid()}.")
        (tmp / "x").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]
