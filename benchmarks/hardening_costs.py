"""What the hardening costs and saves, old code against new, each case in a fresh interpreter, interleaved.

- 100,000 short texts through ``Predictor.predict``: peak RSS and seconds (all tokenized up front vs chunks);
- one 10 M-character text: seconds and peak RSS (whole text tokenized vs cut to max_length * 64 characters);
- Predictor load with a plugin installed whose import takes 2 s (plugins imported vs built-in bundles skip them);
- sha256 of the bundle's model file against a Predictor load (the verify_files=True cost).

Usage:  python -m benchmarks.hardening_costs BUNDLE --old OLD_SOURCE_TREE [--model-bundle MINILM_BUNDLE] [--runs 2]
        [--cases many,huge,load]
``OLD_SOURCE_TREE`` is a checkout of the code to compare with (``git archive <commit> | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CASE = """
import json, resource, sys, time
texts_kind, bundle = sys.argv[1], sys.argv[2]
start = time.perf_counter()
from headreg.runtime import Predictor
predictor = Predictor(bundle)
loaded = time.perf_counter() - start
if texts_kind == "many":
    texts = [f"text number {i}: the service was fine, the food less so." for i in range(100_000)]
elif texts_kind == "huge":
    texts = ["word " * 2_000_000]
else:
    texts = []
start = time.perf_counter()
if texts:
    predictor.predict(texts)
seconds = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would start at the parent's peak.
try:
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"load_s": loaded, "predict_s": seconds, "peak_rss_mb": peak}))
"""

SLOW_PLUGIN = """
import time
time.sleep(2)
from headreg import hookimpl

@hookimpl
def register_heads(register):
    register(name="slow_head", cls="slow_plugin:Head", task="custom")
"""


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return "unknown"
    wanted = [f for f in flags if f in ("avx2", "avx512_vnni", "avx512_bf16") or f.startswith("amx_")]
    return " ".join(sorted(set(wanted))) or "none of avx2/avx512_vnni/avx512_bf16/amx"


def run_case(kind: str, bundle: str, source: Path, site: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADREG_")}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (site, source) if p)
    out = subprocess.run([sys.executable, "-c", CASE, kind, bundle], capture_output=True, text=True, env=env,
                         timeout=1800, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise SystemExit(f"{kind} with {source} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def slow_plugin_site(root: Path) -> Path:
    """A real distribution whose import takes 2 s, pip-installed into a private site directory."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import pip_install, write_plugin  # the plugin-building helpers the tests use

    site = root / "site"
    pip_install(site, write_plugin(root, "slow-plugin", "slow_plugin", SLOW_PLUGIN, entry_name="slow"))
    return site


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--old", required=True, type=Path)
    parser.add_argument("--model-bundle", default=None, help="a real bundle for the hash-vs-load figure")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--cases", default="many,huge,load", help="comma-separated subset of many,huge,load")
    args = parser.parse_args()
    print(f"CPU flags: {cpu_flags()}; load average at start: {os.getloadavg()[0]:.1f}")
    sources = {"old": args.old.resolve(), "new": REPO}
    with tempfile.TemporaryDirectory() as tmp:
        site = slow_plugin_site(Path(tmp))
        wanted = set(args.cases.split(","))
        cases = [(kind, extra) for kind, extra in (("many", None), ("huge", None), ("load", site)) if kind in wanted]
        rows: dict[tuple[str, str], list[dict]] = {}
        for _ in range(args.runs):
            for kind, extra in cases:
                for name, source in sources.items():  # interleaved: old and new see the same load
                    rows.setdefault((kind, name), []).append(run_case(kind, args.bundle, source, extra))
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    labels = {"many": "100,000 texts", "huge": "one 10 M-char text", "load": "load, 2 s plugin installed"}
    print(f"{'case':32} {'old':>28} {'new':>28} {'new/old':>8}")
    for kind, _ in cases:
        old, new = (min(rows[(kind, n)], key=lambda r: r["predict_s"] + r["load_s"]) for n in ("old", "new"))
        key = "load_s" if kind == "load" else "predict_s"
        print(f"{labels[kind]:32} {old[key]:8.2f} s {old['peak_rss_mb']:8.0f} MB RSS "
              f"{new[key]:8.2f} s {new['peak_rss_mb']:8.0f} MB RSS {new[key] / old[key]:7.2f}x")
    if args.model_bundle:
        from headreg.manifest import read_manifest, sha256_file
        from headreg.runtime import Predictor

        model = Path(args.model_bundle) / read_manifest(args.model_bundle)["variants"]["fp32"]["file"]
        for _ in range(args.runs):
            start = time.perf_counter()
            sha256_file(model)
            hashed = time.perf_counter() - start
            start = time.perf_counter()
            Predictor(args.model_bundle)
            loaded = time.perf_counter() - start
            print(f"sha256 of {model.name} ({model.stat().st_size / 1e6:.0f} MB): {hashed:.2f} s; "
                  f"Predictor load without it: {loaded:.2f} s (+{hashed / loaded:.0%} with verify_files=True)")


if __name__ == "__main__":
    main()
