"""Adversarial pass: try bad inputs, crafted bundles, corrupt saved models, hostile plugins and faults against
the installed headreg, and count how many were answered cleanly ("held").

Not part of the default test run (a few minutes). Usage, from the repository root:
    python tests/adversarial/run.py [--json]

Held means: the documented error type with a message (InputError / BundleError / SaveLoadError / a plugin
recorded as failed, exit code 2 on the CLI), or correct output; never a raw Python exception, a hang, a
crash of the host, an invalid ``--json``, or a file written or deleted where it must not be.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]

from conftest import pip_install, write_plugin  # noqa: E402

RESULTS: dict[str, list[tuple[str, bool, str]]] = {}


def attempt(category: str, name: str, check: Callable[[], Any]) -> None:
    try:
        held = check()
        detail = ""
    except Exception as exc:  # noqa: BLE001  a raw exception is exactly what "not held" means
        held, detail = False, f"{type(exc).__name__}: {str(exc)[:200]}"
    RESULTS.setdefault(category, []).append((name, bool(held), detail))


def raises(error: type[BaseException], call: Callable[[], Any], match: str = "") -> bool:
    try:
        call()
    except error as exc:
        return match in str(exc) and bool(str(exc))
    return False


# --- fixtures ------------------------------------------------------------------------------------------------------


def export_tiny(work: Path) -> dict[str, Path]:
    from headreg import attach_head
    from headreg.export.pipeline import export_onnx
    from headreg.testing import load_tokenizer, tiny_backbone

    bundles = {}
    for head, options in (("seq_cls", dict(num_labels=3)), ("multi_label", dict(num_labels=3)),
                          ("token_cls", dict(num_labels=3, id2label={0: "O", 1: "B-PER", 2: "I-PER"}))):
        model = attach_head(tiny_backbone("bert"), head, **options).eval()
        bundles[head] = export_onnx(model, work / head, tokenizer=load_tokenizer(), exporter="torchscript").path
    other = attach_head(tiny_backbone("bert", seed=1), "seq_cls", num_labels=3).eval()  # same shapes, other weights
    bundles["other"] = export_onnx(other, work / "other", tokenizer=load_tokenizer(), exporter="torchscript").path
    model = attach_head(tiny_backbone("bert"), "seq_cls", num_labels=2)
    bundles["saved"] = model.save_pretrained(work / "saved", tokenizer=load_tokenizer())
    return bundles


def copy_of(path: Path, work: Path) -> Path:
    target = Path(tempfile.mkdtemp(dir=work)) / path.name
    shutil.copytree(path, target, symlinks=True)
    return target


def edited(bundle: Path, work: Path, change: Callable[[dict], None], file: str = "headreg.json") -> Path:
    copy = copy_of(bundle, work)
    data = json.loads((copy / file).read_text())
    change(data)
    (copy / file).write_text(json.dumps(data))
    return copy


# --- bad inputs ------------------------------------------------------------------------------------------------------


def bad_inputs(b: dict[str, Path], work: Path) -> None:
    from headreg.runtime import InputError, Predictor
    from headreg.runtime.inputs import read_texts

    seq, multi, ner = Predictor(b["seq_cls"]), Predictor(b["multi_label"]), Predictor(b["token_cls"])
    inputs = [None, 5, 3.5, b"abc", bytearray(b"abc"), {"text": "x"}, object(), [None], [5], [b"x"], [["a"]],
              [("a",)], [("a", None)], [("a", 5)], ["\udcff"], [("ok", "\ud800")], [("a", "b", "c")], [{"text": "x"}]]
    for value in inputs:
        attempt("bad inputs", f"predict({value!r:.30})", lambda v=value: raises(InputError, lambda: seq.predict(v)))
        attempt("bad inputs", f"embed({value!r:.30})", lambda v=value: raises(InputError, lambda: seq.embed(v)))
    options = [(multi, dict(thresholds=None)), (multi, dict(thresholds=math.nan)), (multi, dict(thresholds=math.inf)),
               (multi, dict(thresholds=-0.1)), (multi, dict(thresholds=2)), (multi, dict(thresholds="0.5")),
               (multi, dict(thresholds=[0.5])), (multi, dict(thresholds={"nope": 0.5})),
               (multi, dict(thresholds={"LABEL_0": math.nan})), (multi, dict(threshold=True)), (multi, dict(treshold=0.3)),
               (seq, dict(aggregation="max")), (seq, dict(thresholds=0.5)), (seq, dict(id2label={"0": "x"})),
               (ner, dict(ignore_labels=None)), (ner, dict(ignore_labels="O")), (ner, dict(ignore_labels=[1])),
               (ner, dict(aggregation="best")), (ner, dict(aggregation=None)), (seq, dict(long_text="sideways")),
               (seq, dict(window_stride=-1, long_text="window")), (seq, dict(window_reduce="median", long_text="window"))]
    for predictor, option in options:
        attempt("bad inputs", f"{predictor.head} {option}", lambda p=predictor, o=option: raises(
            InputError, lambda: p.predict(["some text"], **o)))
    for kwargs in (dict(quantized=True, variant="fp32"), dict(batch_size=0), dict(batch_size="3"), dict(max_length=0),
                   dict(threads=-1), dict(max_batch_tokens=True)):
        attempt("bad inputs", f"Predictor({kwargs})", lambda k=kwargs: raises(
            InputError, lambda: Predictor(b["seq_cls"], **k)))
    files = {"latin1.txt": "caf\xe9\n".encode("latin-1"), "null.jsonl": b'{"text": null}\n', "int.jsonl": b'{"text": 5}\n',
             "typo.jsonl": b'{"txt": "x"}\n', "pair.jsonl": b'{"text": "a", "text_pair": 3}\n'}
    for name, data in files.items():
        (work / name).write_bytes(data)
        attempt("bad inputs", f"read_texts({name})", lambda n=name: raises(InputError, lambda: read_texts(work / n)))
    # inputs that are valid but hostile: answered correctly and cheaply
    attempt("bad inputs", "10 M-character text", lambda: len(seq.encode(["word " * 2_000_000])[0]) == seq.max_length)
    attempt("bad inputs", "empty text", lambda: seq.predict([""])[0]["label"] in seq.labels)
    (work / "splits.txt").write_bytes("a\x0cb\u2028c\x85d\x1ce\r\nf\n".encode())
    attempt("bad inputs", "--file line breaks", lambda: read_texts(work / "splits.txt") == ["a\x0cb\u2028c\x85d\x1ce", "f"])
    (work / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "a\xe2\x80\xa8b"}\n')
    attempt("bad inputs", "BOM + raw U+2028 JSONL", lambda: read_texts(work / "bom.jsonl") == ["a\u2028b"])

    def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "headreg.cli", *args], input=stdin, capture_output=True, timeout=300)

    for text in ("[/]", "[bold red]x[/bold red]", "\x1b[31mred\x1b]8;;http://x\x07y\x1b]8;;\x07", "\u202eevil"):
        attempt("bad inputs", f"CLI table {text!r:.20}", lambda t=text: (lambda r: r.returncode == 0 and b"\x1b" not in r.stdout
                                                                        and b"\xe2\x80\xae" not in r.stdout)(
            cli("predict", str(b["seq_cls"]), t)))
    attempt("bad inputs", "CLI --json of odd texts", lambda: len(json.loads(cli("predict", str(b["seq_cls"]), "--json", "[/]",
                                                                               "\u2028", "\x01").stdout)) == 3)
    attempt("bad inputs", "CLI invalid UTF-8 on stdin", lambda: (lambda r: r.returncode == 2 and b"Traceback" not in r.stderr)(
        cli("predict", str(b["seq_cls"]), "--file", "-", stdin=b"\xff\xfe\n")))
    attempt("bad inputs", "CLI lone surrogate argument", lambda: (lambda r: r.returncode == 2 and b"Traceback" not in r.stderr)(
        subprocess.run([sys.executable, "-m", "headreg.cli", "predict", str(b["seq_cls"]), b"caf\xe9"],
                       capture_output=True, timeout=300)))


# --- crafted bundles ---------------------------------------------------------------------------------------------------


def crafted_bundles(b: dict[str, Path], work: Path) -> None:
    from headreg.errors import BundleError
    from headreg.export import verify_bundle
    from headreg.runtime import Predictor

    seq = b["seq_cls"]
    changes: dict[str, Callable[[dict], None]] = {
        "tokenizer /etc/passwd": lambda m: m["tokenizer"].update(file="/etc/passwd"),
        "tokenizer /dev/zero": lambda m: m["tokenizer"].update(file="/dev/zero"),
        "tokenizer ../": lambda m: m["tokenizer"].update(file="../seq_cls/tokenizer.json"),
        "tokenizer int": lambda m: m["tokenizer"].update(file=5),
        "variant absolute": lambda m: m["variants"]["fp32"].update(file=str(seq / "model.onnx")),
        "variant ../": lambda m: m["variants"]["fp32"].update(file="../seq_cls/model.onnx"),
        "variant dir": lambda m: m["variants"]["fp32"].update(file="."),
        "files ../": lambda m: m["files"].update({"../x": "0" * 64}),
        "files bad digest": lambda m: m["files"].update({"model.onnx": "zz"}),
        "head string": lambda m: m.update(head="seq_cls"),
        "head name int": lambda m: m["head"].update(name=5),
        "head level": lambda m: m["head"].update(level="paragraph"),
        "max_length -5": lambda m: m.update(max_length=-5),
        "max_length str": lambda m: m.update(max_length="128"),
        "max_length huge": lambda m: m.update(max_length=10**12),
        "id2label keys": lambda m: m.update(id2label={"a": "x", "b": "y", "c": "z"}),
        "id2label gap": lambda m: m.update(id2label={"0": "x", "1": "y", "9": "z"}),
        "id2label values": lambda m: m.update(id2label={"0": 1, "1": 2, "2": 3}),
        "num_labels 12M": lambda m: m.update(num_labels=12_000_000),
        "num_labels float": lambda m: m.update(num_labels=3.0),
        "padding_side": lambda m: m.update(padding_side="up"),
        "inputs missing mask": lambda m: m.update(inputs=["input_ids"]),
        "inputs duplicate": lambda m: m.update(inputs=["input_ids", "input_ids", "attention_mask"]),
        "outputs not dict": lambda m: m.update(outputs=["logits"]),
        "outputs width lie": lambda m: m["outputs"].update(logits=["batch", 7]),
        "labels fewer than logits": lambda m: m.update(num_labels=2, id2label={"0": "a", "1": "b"}),
        "pad id negative": lambda m: m["tokenizer"].update(pad_token_id=-1),
        "pad id beyond vocab": lambda m: m["tokenizer"].update(pad_token_id=10**6),
        "vocab smaller than tokenizer": lambda m: m["backbone"].update(vocab_size=100),
        "pair str": lambda m: m["tokenizer"].update(pair="no"),
        "variants default unknown": lambda m: m["variants"].update(default="fp16"),
        "variant not object": lambda m: m["variants"].update(int8="model.int8.onnx"),
        "postprocess injection": lambda m: m["head"].update(postprocess="os:system"),
        "postprocess not entry": lambda m: m["head"].update(postprocess="rm -rf /"),
        "plugin not installed": lambda m: m["head"].update(name="ghost_head", plugin="headreg-plugin-ghost"),
        "format version 99": lambda m: m.update(format_version=99),
        "format version str": lambda m: m.update(format_version="1"),
        "format wrong": lambda m: m.update(format="other"),
        "verification atol str": lambda m: m["verification"].update(atol="x"),
        "postprocess_config list": lambda m: m.update(postprocess_config=[1]),
        "backbone hidden -1": lambda m: m["backbone"].update(hidden_size=-1),
        "manifest is a list": lambda m: (m.clear()),
    }
    for name, change in changes.items():
        attempt("crafted bundles", name, lambda c=change: raises(BundleError, lambda: Predictor(edited(seq, work, c))))

    def raw_manifest(text: str) -> Path:
        copy = copy_of(seq, work)
        (copy / "headreg.json").write_text(text)
        return copy

    original = (seq / "headreg.json").read_text()
    for name, text in {"duplicate keys": original.replace('"pooling": {', '"pooling": {"strategy": "max"}, "pooling": {', 1),
                       "NaN": original.replace('"num_labels": 3', '"num_labels": NaN', 1),
                       "not JSON": "{", "deep nesting": "[" * 100_000, "empty": "", "binary": "\x00\xff"}.items():
        attempt("crafted bundles", f"manifest {name}", lambda t=text: raises(BundleError, lambda: Predictor(raw_manifest(t))))

    def symlinked(name: str, target: str) -> Path:
        copy = copy_of(seq, work)
        (copy / name).unlink()
        (copy / name).symlink_to(target)
        return copy

    for name, target in (("tokenizer.json", "/dev/zero"), ("tokenizer.json", "/etc/hostname"),
                         ("headreg.json", "/etc/hostname"), ("model.onnx", "/dev/urandom"),
                         ("tokenizer.json", str(seq / "tokenizer.json"))):
        attempt("crafted bundles", f"symlink {name} -> {target}", lambda n=name, t=target: raises(
            BundleError, lambda: Predictor(symlinked(n, t))))

    def replaced(name: str, data: bytes) -> Path:
        copy = copy_of(seq, work)
        (copy / name).write_bytes(data)
        return copy

    attempt("crafted bundles", "model.onnx garbage", lambda: raises(BundleError, lambda: Predictor(replaced("model.onnx", b"x"))))
    attempt("crafted bundles", "tokenizer changed", lambda: raises(BundleError, lambda: Predictor(replaced(
        "tokenizer.json", (seq / "tokenizer.json").read_bytes().replace(b'"[UNK]"', b'"[UNX]"', 1)))))
    attempt("crafted bundles", "other model's onnx", lambda: raises(BundleError, lambda: Predictor(replaced(
        "model.onnx", (b["other"] / "model.onnx").read_bytes()))))

    import zipfile

    import numpy as np

    def golden(build: Callable[[zipfile.ZipFile], None]) -> Path:
        copy = copy_of(seq, work)
        with zipfile.ZipFile(copy / "golden.npz", "w", compression=zipfile.ZIP_DEFLATED) as archive:
            build(archive)
        return copy

    def bomb(archive: zipfile.ZipFile) -> None:
        for index in range(12):  # 12 x 128 MB of zeros, ~1.5 MB compressed
            with archive.open(f"{index}.input.input_ids.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.zeros((4096, 4096), dtype=np.int64))

    def liar(archive: zipfile.ZipFile) -> None:
        with archive.open("0.input.input_ids.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "<i8", "fortran_order": False, "shape": (1 << 40,)})

    def pickled(archive: zipfile.ZipFile) -> None:
        with archive.open("0.input.input_ids.npy", "w") as member:
            np.lib.format.write_array(member, np.array([object()], dtype=object), allow_pickle=True)

    for name, build in (("golden zip bomb", bomb), ("golden shape lie", liar), ("golden pickle", pickled)):
        attempt("crafted bundles", name, lambda bl=build: raises(BundleError, lambda: verify_bundle(golden(bl))))
    attempt("crafted bundles", "verify num_labels 12M in head config", lambda: raises(BundleError, lambda: verify_bundle(
        edited(seq, work, lambda m: m["head"]["config"].update(num_labels=12_000_000))), "head.config.num_labels"))
    attempt("crafted bundles", "verify num_labels 900k in head config", lambda: any(
        "does not fit" in note for note in verify_bundle(edited(seq, work, lambda m: m["head"]["config"].update(
            num_labels=900_000))).notes))
    attempt("crafted bundles", "verification.json huge case list", lambda: raises(BundleError, lambda: verify_bundle(
        edited(seq, work, lambda r: r.update(case_results=[1, 2, 3]), file="verification.json"))))


# --- corrupt saved models ----------------------------------------------------------------------------------------------


def saved_models(b: dict[str, Path], work: Path) -> None:
    from safetensors.torch import load_file, save_file

    from headreg import load_model
    from headreg.errors import SaveLoadError

    saved = b["saved"]
    changes: dict[str, Callable[[dict], None]] = {
        "head int": lambda c: c.update(head=5),
        "head unknown": lambda c: c.update(head="nope", plugin="headreg-plugin-nope"),
        "head_config list": lambda c: c.update(head_config=[1]),
        "num_labels -5": lambda c: c["head_config"].update(num_labels=-5),
        "num_labels str": lambda c: c["head_config"].update(num_labels="2"),
        "num_labels 5 vs weights": lambda c: c["head_config"].update(num_labels=5),
        "id2label keys": lambda c: c["head_config"].update(id2label={"a": "x", "b": "y"}),
        "unknown head option": lambda c: c["head_config"].update(frobnicate=1),
        "dropout str": lambda c: c["head_config"].update(dropout="high"),
        "pooling str": lambda c: c.update(pooling="cls"),
        "pooling strategy": lambda c: c["pooling"].update(strategy="median"),
        "pooling activation": lambda c: c["pooling"].update(activation="os.system"),
        "pooling extra": lambda c: c["pooling"].update(evil=1),
        "backbone ../": lambda c: c.update(backbone="../x"),
        "format": lambda c: c.update(format="other"),
        "format_version 99": lambda c: c.update(format_version=99),
        "format_version str": lambda c: c.update(format_version="1"),
        "missing head_config": lambda c: c.pop("head_config"),
    }
    for name, change in changes.items():
        attempt("saved models", name, lambda c=change: raises(SaveLoadError, lambda: load_model(edited(
            saved, work, c, file="headreg_model.json"))))

    def variant(mutate: Callable[[Path], None]) -> Path:
        copy = copy_of(saved, work)
        mutate(copy)
        return copy

    def rename_key(copy: Path) -> None:
        state = load_file(copy / "backbone" / "model.safetensors")
        state["bogus"] = state.pop("embeddings.word_embeddings.weight")
        save_file(state, copy / "backbone" / "model.safetensors", metadata={"format": "pt"})

    def drop_key(copy: Path) -> None:
        state = load_file(copy / "backbone" / "model.safetensors")
        state.pop("encoder.layer.0.attention.self.query.weight")
        save_file(state, copy / "backbone" / "model.safetensors", metadata={"format": "pt"})

    def pickle_only(copy: Path) -> None:
        (copy / "backbone" / "model.safetensors").unlink()
        (copy / "backbone" / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")

    def remote_code(copy: Path) -> None:
        config = json.loads((copy / "backbone" / "config.json").read_text())
        config["auto_map"] = {"AutoModel": "evil.EvilModel"}
        (copy / "backbone" / "config.json").write_text(json.dumps(config))
        (copy / "backbone" / "evil.py").write_text(f"open({str(work / 'pwned')!r}, 'w').write('x')\n")

    def text(name: str, data: str) -> Callable[[Path], None]:
        return lambda copy: (copy / name).write_text(data)

    mutations = {
        "backbone key renamed": rename_key, "backbone key missing": drop_key, "pickle only": pickle_only,
        "head weights garbage": lambda c: (c / "head.safetensors").write_bytes(b"garbage"),
        "config not JSON": text("headreg_model.json", "{"),
        "config duplicate keys": lambda c: (c / "headreg_model.json").write_text((c / "headreg_model.json").read_text().replace(
            '"pooling": {', '"pooling": {"strategy": "max"}, "pooling": {', 1)),
        "config NaN": lambda c: (c / "headreg_model.json").write_text((c / "headreg_model.json").read_text().replace(
            '"num_labels": 2', '"num_labels": NaN', 1)),
        "backbone config garbage": text("backbone/config.json", "[]"),
        "missing head weights": lambda c: (c / "head.safetensors").unlink(),
    }
    for name, mutate in mutations.items():
        attempt("saved models", name, lambda m=mutate: raises(SaveLoadError, lambda: load_model(variant(m))))
    attempt("saved models", "remote code not imported", lambda: (raises(Exception, lambda: load_model(variant(remote_code)))
                                                                 or True) and not (work / "pwned").exists())


# --- plugins -------------------------------------------------------------------------------------------------------------

PLUGINS = {
    "exit-import": "import sys\nsys.exit(3)\n",
    "interrupt-import": "raise KeyboardInterrupt\n",
    "exit-hook": "import sys\nfrom headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n    sys.exit(1)\n",
    "interrupt-hook": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n    raise KeyboardInterrupt\n",
    "raise-import": "raise RuntimeError('boom')\n",
    "prints": "import os\nprint('noise')\nos.write(1, b'fd noise\\n')\nfrom headreg import hookimpl\n"
              "@hookimpl\ndef register_heads(register):\n    print('more')\n"
              "    register(name='chatty', cls='p_prints:X', task='custom')\n",
    "string-aliases": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n"
                      "    register(name='stringy', cls='a:B', aliases='xyz')\n",
    "hook-42": "register_heads = 42\n",
    "nan-task": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n"
                "    register(name='nanny', cls='a:B', task=float('nan'))\n",
    "nan-description": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n"
                       "    register(name='nandesc', cls='a:B', description=float('nan'))\n",
    "broken-override": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n"
                       "    register(name='seq_cls', cls='gone:X', postprocess='gone:y', override=True)\n",
    "markup-name": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n"
                   "    register(name='markup', cls='a:B', description='[bold red]x[/] \\x1b[31m')\n",
    "bad-name": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n"
                "    register(name='../../etc', cls='a:B')\n",
    "bad-cls": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n"
               "    register(name='badcls', cls='not an entry')\n",
    "no-hook": "x = 1\n",
    "override-override-false": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n"
                               "    register(name='seq_cls', cls='a:B', override='yes')\n",
}
EXPECTED_LOADED = {"prints", "markup-name"}


def plugins(b: dict[str, Path], work: Path) -> None:
    projects = [write_plugin(work / "plugin-src", f"hp-{name}", f"p_{name.replace('-', '_')}", body)
                for name, body in PLUGINS.items()]
    site = work / "plugin-site"
    pip_install(site, *projects)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADREG_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "headreg.cli", *args], capture_output=True, text=True, env=env,
                              timeout=300)

    listing = run("plugins", "--json")
    infos = {p["distribution"]: p for p in json.loads(listing.stdout)} if listing.returncode == 0 else {}
    for name in PLUGINS:
        info = infos.get(f"hp-{name}", {})
        want = "loaded" if name in EXPECTED_LOADED else "failed"
        attempt("plugins", name, lambda i=info, w=want: i.get("status") == w and (w == "loaded" or bool(i.get("error"))))
    heads = run("heads", "--json")
    attempt("plugins", "heads --json is JSON with the built-ins intact", lambda: {
        h["name"]: h["plugin"] for h in json.loads(heads.stdout)}.get("seq_cls") == "headreg")
    table = run("heads")
    attempt("plugins", "heads table shows markup as text", lambda: table.returncode == 0 and "[bold red]x[/]" in table.stdout
            and "\x1b" not in table.stdout)
    attempt("plugins", "built-in bundle served despite plugins", lambda: subprocess.run(
        [sys.executable, "-c", f"from headreg.runtime import Predictor; Predictor({str(b['seq_cls'])!r}).predict('x')"],
        env=env, capture_output=True, timeout=300).returncode == 0)


# --- faults --------------------------------------------------------------------------------------------------------------


def faults(b: dict[str, Path], work: Path) -> None:
    from headreg.errors import SaveLoadError

    saved = b["saved"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADREG_")}

    def killed_export(sig: int, delay: float) -> bool:
        parent = Path(tempfile.mkdtemp(dir=work))
        process = subprocess.Popen([sys.executable, "-m", "headreg.cli", "export", str(saved), "-o", str(parent / "out"),
                                    "--exporter", "torchscript", "--json"], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.send_signal(sig)
        process.wait(timeout=120)
        out = parent / "out"
        complete = out.exists() and (out / "headreg.json").exists() and (out / "verification.json").exists()
        partial = out.exists() and not complete
        if partial:
            return False
        from headreg.atomic import remove_leftovers

        remove_leftovers(out)  # what the next export to the same place does
        return sorted(p.name for p in parent.iterdir()) in ([], ["out"])

    for index, delay in enumerate((0.5, 2.0, 4.0, 6.0, 8.0, 10.0)):
        for sig in (signal.SIGKILL, signal.SIGTERM):
            attempt("faults", f"{signal.Signals(sig).name} at {delay}s", lambda s=sig, d=delay: killed_export(s, d))

    def non_bundle_overwrite() -> bool:
        documents = Path(tempfile.mkdtemp(dir=work))
        (documents / "thesis.tex").write_text("years")
        result = subprocess.run([sys.executable, "-m", "headreg.cli", "export", str(saved), "-o", str(documents),
                                 "--overwrite"], env=env, capture_output=True, timeout=300)
        return result.returncode == 2 and (documents / "thesis.tex").exists()

    attempt("faults", "--overwrite a directory of documents", non_bundle_overwrite)
    for target in ("source", "parent"):
        attempt("faults", f"-o {target} --overwrite", lambda t=target: subprocess.run(
            [sys.executable, "-m", "headreg.cli", "export", str(saved), "-o", str(saved if t == "source" else saved.parent),
             "--overwrite"], env=env, capture_output=True, timeout=300).returncode == 2 and (saved / "headreg_model.json").exists())

    from headreg import load_model

    model = load_model(saved)
    attempt("faults", "save_pretrained into a file path", lambda: raises(SaveLoadError, lambda: model.save_pretrained(
        Path(tempfile.mkstemp(dir=work)[1]), overwrite=True)))
    attempt("faults", "save_pretrained modes under umask 022", lambda: _modes_ok(model, work))
    if os.getuid() == 0 and shutil.which("mount"):
        mount = Path(tempfile.mkdtemp(dir=work))
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)]).returncode == 0:
            try:
                attempt("faults", "disk full (save_pretrained)", lambda: raises(
                    SaveLoadError, lambda: model.save_pretrained(mount / "m"), "no space left") and not list(mount.iterdir()))
                attempt("faults", "disk full (export)", lambda: (lambda r: r.returncode == 2 and b"no space left" in r.stderr)(
                    subprocess.run([sys.executable, "-m", "headreg.cli", "export", str(saved), "-o", str(mount / "b"),
                                    "--exporter", "torchscript"], env=env, capture_output=True, timeout=600)))
                subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
                attempt("faults", "read-only output parent (export)", lambda: (lambda r: r.returncode == 2 and b"read-only" in r.stderr)(
                    subprocess.run([sys.executable, "-m", "headreg.cli", "export", str(saved), "-o", str(mount / "b")],
                                   env=env, capture_output=True, timeout=600)))
            finally:
                subprocess.run(["umount", str(mount)])


def _modes_ok(model: Any, work: Path) -> bool:
    previous = os.umask(0o022)
    try:
        out = model.save_pretrained(Path(tempfile.mkdtemp(dir=work)) / "m")
    finally:
        os.umask(previous)
    return all(p.stat().st_mode & 0o777 in (0o644, 0o755) for p in out.rglob("*"))


def main() -> None:
    as_json = "--json" in sys.argv
    with tempfile.TemporaryDirectory(prefix="headreg-adversarial-") as tmp:
        work = Path(tmp)
        bundles = export_tiny(work)
        for section in (bad_inputs, crafted_bundles, saved_models, plugins, faults):
            start = time.perf_counter()
            section(bundles, work)
            print(f"{section.__name__}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    summary = {category: {"tried": len(rows), "held": sum(held for _, held, _ in rows),
                          "not_held": [f"{name} ({detail})" if detail else name for name, held, detail in rows if not held]}
               for category, rows in RESULTS.items()}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for category, data in summary.items():
        print(f"{category}: {data['held']}/{data['tried']} held")
        for name in data["not_held"]:
            print(f"  not held: {name}")


if __name__ == "__main__":
    main()
