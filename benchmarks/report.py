"""What ``benchmarks.run`` reports: the per-shape lines, the summary table, markdown for docs/performance.md,
the chart, and the machine it ran on."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

from .engines import LABELS, VARIANT_OF, headreg_engines


def rescale(report: dict[str, Any], gflops: float) -> None:
    """Recompute floors and % of floor with the run's best matmul rate."""
    for model in report["models"].values():
        rows = list(model["shapes"]) + ([model["corpus"]] if model.get("corpus") else [])
        for row in rows:
            row["floor_ms"] = 1e3 * row.get("gflop_useful", row.get("gflop", 0.0)) / gflops
            for result in row["engines"].values():
                result["pct_of_floor"] = 100.0 * row["floor_ms"] / result["p50_ms"]


def print_shape(row: dict[str, Any]) -> None:
    print(f"  {row['batch']:>3} x {row['length']:<4} floor {row['floor_ms']:8.2f} ms   (fastest PyTorch: "
          f"{row['pytorch_best']}; load average {row.get('load_average', float('nan')):.1f})")
    for name, r in row["engines"].items():
        print(
            f"      {name:<16} p50 {r['p50_ms']:9.2f}  p90 {r['p90_ms']:9.2f} ms  {r['throughput_rows_s']:8.1f} seq/s"
            f"  x{r['ratio_vs_pytorch']:5.2f} vs PyTorch  {r['pct_of_floor']:5.1f}% of floor"
        )
    sys.stdout.flush()


def summary_table(report: dict[str, Any]) -> str:
    """One line per shape: ratio to the faster PyTorch and % of floor for each headreg engine."""
    lines = []
    for name, model in report["models"].items():
        lines.append(f"\n{name}: {model['description']}; {model['mflop_per_token_128']:.1f} MFLOP/token at 128")
        if model.get("default_variant"):
            lines.append(f"default variant here: {model['default_variant']} ({model.get('default_reason', '')})")
        engines = headreg_engines(model["shapes"][0]["engines"])
        head = f"| {'batch x len':<11} | {'floor ms':>9} | {'fastest PyTorch p50':>26} |"
        for engine in engines:
            head += f" {engine + ' p50 (ratio, %floor)':>34} |"
        lines += [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
        for row in model["shapes"]:
            best = row["engines"][row["pytorch_best"]]
            line = f"| {row['batch']:>3} x {row['length']:<5} | {row['floor_ms']:9.2f} | {best['p50_ms']:8.2f} ms {'(' + row['pytorch_best'][8:] + ')':<12} |"
            for engine in engines:
                r = row["engines"][engine]
                line += f" {r['p50_ms']:10.2f} ms (x{r['ratio_vs_pytorch']:4.2f}, {r['pct_of_floor']:5.1f}%) |"
            lines.append(line)
        corpus = model.get("corpus")
        if corpus:
            lines.append(
                f"\nmixed-length corpus: {corpus['rows']} texts, {corpus['tokens']} tokens "
                f"(min/median/max {corpus['length_min_median_max']}), batch {corpus['batch_size']}; "
                f"padded tokens arrival {corpus['padded_tokens']['arrival']} vs bucketed {corpus['padded_tokens']['bucketed']}"
            )
            for engine, r in corpus["engines"].items():
                lines.append(
                    f"  {engine:<32} p50 {r['p50_ms']:9.1f} ms  {r['throughput_rows_s']:7.1f} texts/s"
                    f"  x{r['ratio_vs_pytorch']:5.2f} vs PyTorch arrival  {r['pct_of_floor']:5.1f}% of floor"
                )
            lines.append(
                f"  bucketing vs arrival order: x{corpus['bucketing_speedup_ort_fp32']:.2f} (headreg fp32), "
                f"x{corpus['bucketing_speedup_pytorch']:.2f} (PyTorch)"
            )
            for engine, a in corpus["agreement_vs_pytorch"].items():
                lines.append(
                    f"  {engine} vs PyTorch: {a['identical_decisions_pct']:.2f}% identical decisions, "
                    f"score drift max {a['score_drift_max']:.4f} mean {a['score_drift_mean']:.5f}"
                )
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The results as markdown tables (what docs/performance.md shows)."""
    gflops = report["matmul_gflops"]
    out = [
        f"{report['machine']['cpu']}, {report['threads']} threads, ISA {' '.join(report['machine']['isa'])}; "
        f"fp32 matmul {gflops['best']:.0f} GFLOP/s (best of the run; median {gflops['median']:.0f}); "
        f"load average {report['load_average_before'][0]:.1f} before, {report['load_average_after'][0]:.1f} after; "
        f"PyTorch OMP_WAIT_POLICY={report['omp_wait_policy']}. Cells: p50 ms / p90 ms, (ratio to the fastest PyTorch "
        "configuration of that shape, named in its column; % of the fp32 compute floor). int8 and bf16 can pass 100% "
        "of the fp32 floor.",
    ]
    for name, model in report["models"].items():
        out += ["", f"**{name}**: {model['description']}; {model['mflop_per_token_128']:.1f} MFLOP/token at 128", ""]
        if model.get("default_variant"):
            out += [f"Default variant on this machine: **{model['default_variant']}** ({model.get('default_reason', '')}).", ""]
        engines = headreg_engines(model["shapes"][0]["engines"])
        labels = [LABELS[e] + (" **(default)**" if VARIANT_OF.get(e) == model.get("default_variant") else "") for e in engines]
        out.append("| batch x length | floor ms | fastest PyTorch p50 / p90 | " + " | ".join(labels) + " |")
        out.append("|---" * (3 + len(engines)) + "|")
        for row in model["shapes"]:
            best = row["engines"][row["pytorch_best"]]
            cells = [
                f"{row['batch']} x {row['length']}",
                f"{row['floor_ms']:.1f}",
                f"{best['p50_ms']:.1f} / {best['p90_ms']:.1f} ({row['pytorch_best'][8:]})",
            ]
            for engine in engines:
                r = row["engines"][engine]
                cells.append(f"{r['p50_ms']:.1f} / {r['p90_ms']:.1f} (x{r['ratio_vs_pytorch']:.2f}, {r['pct_of_floor']:.0f}%)")
            out.append("| " + " | ".join(cells) + " |")
        corpus = model.get("corpus")
        if corpus:
            out += [
                "",
                f"Mixed-length corpus, {corpus['rows']} texts, {corpus['tokens']} tokens (min/median/max "
                f"{'/'.join(map(str, corpus['length_min_median_max']))}), batch {corpus['batch_size']}; padded tokens "
                f"computed: arrival order {corpus['padded_tokens']['arrival']}, bucketed {corpus['padded_tokens']['bucketed']}.",
                "",
                "| engine | pass p50 / p90 ms | texts/s | vs PyTorch arrival order | % of floor |",
                "|---|---|---|---|---|",
            ]
            for engine, r in corpus["engines"].items():
                out.append(
                    f"| {engine} | {r['p50_ms']:.0f} / {r['p90_ms']:.0f} | {r['throughput_rows_s']:.1f} | "
                    f"x{r['ratio_vs_pytorch']:.2f} | {r['pct_of_floor']:.0f}% |"
                )
            out.append("")
            out.append(
                f"Bucketing vs arrival order: x{corpus['bucketing_speedup_ort_fp32']:.2f} (headreg fp32), "
                f"x{corpus['bucketing_speedup_pytorch']:.2f} (PyTorch)."
            )
            for engine, a in corpus["agreement_vs_pytorch"].items():
                out.append(
                    f"{engine} vs PyTorch: {a['identical_decisions_pct']:.2f}% identical decisions, softmax score drift "
                    f"max {a['score_drift_max']:.4f}, mean {a['score_drift_mean']:.5f}."
                )
    return "\n".join(out) + "\n"


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"].items())
    lengths = sorted({row["length"] for _, m in models for row in m["shapes"]})
    fig, axes = plt.subplots(len(models), len(lengths), figsize=(4.2 * len(lengths), 3.4 * len(models)), squeeze=False)
    styles = {"pytorch": ("tab:gray", "o"), "ort-fp32": ("tab:blue", "s"), "ort-fp32-fused": ("tab:cyan", "^"),
              "ort-int8": ("tab:red", "D"), "ov-bf16": ("tab:green", "v"), "ov-int8": ("tab:cyan", "P"), "ov-fp32": ("tab:olive", "x")}
    for (name, model), row_axes in zip(models, axes):
        for length, ax in zip(lengths, row_axes):
            rows = [r for r in model["shapes"] if r["length"] == length]
            if not rows:
                ax.set_visible(False)
                continue
            batches = [r["batch"] for r in rows]
            for engine, (color, marker) in styles.items():
                if engine != "pytorch" and engine not in rows[0]["engines"]:
                    continue
                key = (lambda r: r["pytorch_best"]) if engine == "pytorch" else (lambda r, e=engine: e)
                ax.plot(batches, [r["engines"][key(r)]["throughput_rows_s"] for r in rows], marker=marker, color=color, label=LABELS[engine])
            ax.plot(batches, [r["batch"] / r["floor_ms"] * 1e3 for r in rows], "k_--", markersize=16, label="fp32 compute floor")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.set_title(f"{name}, length {length}", fontsize=10)
            ax.set_xlabel("batch size")
            ax.set_ylabel("sequences / s")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    machine = report["machine"]
    fig.suptitle(
        f"{machine['cpu']} - {report['threads']} threads - matmul {report['matmul_gflops']['best']:.0f} GFLOP/s", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def machine_info() -> dict[str, Any]:
    from .machine import cpu_name, isa

    import onnxruntime
    import torch
    import transformers

    from headreg.runtime.backends import openvino_version

    return {
        "cpu": cpu_name(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": sorted(isa()),
        "python": platform.python_version(),
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__,
                     "openvino": openvino_version()},
    }
