"""Regenerate the architecture table of docs/architectures.md: every text model type of the installed
transformers, tiny and random, with seq_cls and token_cls through attach -> export -> verify -> predict.

Usage:
  python -m benchmarks.architectures run RESULTS.jsonl [--types bert llama ...]   # appends; skips pairs done
  python -m benchmarks.architectures table RESULTS.jsonl [--write docs/architectures.md]

``run`` works in pieces (a machine shared with others: one process, one torch thread, resumable); ``table``
prints the markdown table (or replaces the table between the markers in the docs page).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HEADS = ("seq_cls", "token_cls")
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"
# optimum-onnx's supported list (docs/source/onnx/overview.mdx of huggingface/optimum-onnx), as model types; it
# exports with transformers < 4.58 only (see docs/architectures.md).
OPTIMUM_ONNX = {
    "arcee", "albert", "bert", "bloom", "camembert", "codegen", "cohere", "convbert", "data2vec-text", "deberta",
    "deberta-v2", "deepseek_v3", "distilbert", "electra", "esm", "falcon", "flaubert", "gemma", "gemma2", "glm",
    "gpt2", "gpt_bigcode", "gptj", "gpt_neo", "gpt_neox", "opt", "granite", "helium", "ibert", "layoutlm", "lilt",
    "llama", "markuplm", "mistral", "mobilebert", "modernbert", "mpnet", "nemotron", "nystromformer", "olmo",
    "olmo2", "perceiver", "phi", "phi3", "qwen2", "qwen3", "qwen3_moe", "rembert", "roberta", "roformer", "smollm3",
    "squeezebert", "stablelm", "xlm", "xlm-roberta",
}

# Issue #20's measure is "at least 54 of the 56 architectures" its author tried; it names the 15 that did not
# pass and not the rest ("the common encoders/decoders"). Reconstructed as those 15 plus optimum-onnx's supported
# list (the common text architectures), of the types whose tiny config runs here.
ISSUE_NAMED = {
    "gpt2", "gpt_neo", "cohere", "mixtral", "qwen2_moe", "qwen3_moe", "longformer", "convbert", "nystromformer",
    "yoso", "fnet", "mpnet", "ibert", "xmod", "esm",
}


def run(results: Path, types: list[str] | None) -> None:
    import torch

    from headreg import architectures as A
    from headreg.testing import load_tokenizer

    torch.set_num_threads(1)
    done = {(r["model_type"], r["head"]) for r in read(results)}
    tokenizer = load_tokenizer()
    workdir = results.parent / (results.stem + "-bundles")
    with results.open("a") as out:
        for model_type in types or A.candidate_model_types():
            if all((model_type, head) in done for head in HEADS):
                continue
            probe = A.probe(model_type)
            # both heads in one multi-head bundle, as the matrix test runs them
            results = A.round_trip_heads(model_type, HEADS, workdir, tokenizer=tokenizer) if probe.runs else {}
            for row in A.result_rows(probe, results, HEADS):
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(model_type, row["head"], row["status"], row.get("exporter", ""), row["reason"][:120], flush=True)


def read(results: Path) -> list[dict]:
    if not results.exists():
        return []
    latest = {}
    for line in results.read_text().splitlines():
        row = json.loads(line)
        latest[row["model_type"], row["head"]] = row  # a rerun replaces the earlier row
    return list(latest.values())


def table(rows: list[dict], candidates: list[str] | None = None) -> str:
    """The markdown table of ``rows``; ``candidates`` (the model types the matrix should hold) adds a line for
    those not run yet."""
    by_type: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_type.setdefault(row["model_type"], {})[row["head"]] = row
    not_run = sorted(set(candidates or ()) - set(by_type))
    matrix = {t: heads for t, heads in by_type.items() if any(r["status"] != "not in matrix" for r in heads.values())}
    outside = {t: heads for t, heads in by_type.items() if t not in matrix}
    served = [t for t, heads in matrix.items() if all(heads.get(h, {}).get("status") == "served" for h in HEADS)]
    lines = [
        f"{len(served)} of {len(matrix)} architectures served with both heads "
        f"({sum(r['status'] == 'served' for heads in matrix.values() for r in heads.values())} of "
        f"{sum(len(heads) for heads in matrix.values())} architecture x head exports).",
        "",
        "| model type | backbone | seq_cls | token_cls | exporter | max_length | batch_padding | optimum-onnx | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model_type in sorted(matrix):
        heads = matrix[model_type]
        first = heads.get("seq_cls") or next(iter(heads.values()))
        exporters = sorted({r.get("exporter") for r in heads.values() if r.get("exporter")})
        notes = sorted({f"{h}: {r['reason'][:160]}" for h, r in heads.items() if r["status"] != "served"})
        padding = "" if all(r.get("batch_padding", True) for r in heads.values()) else "false"
        lines.append(
            f"| {model_type} | {first.get('backbone', '')} | {_status(heads.get('seq_cls'))} | "
            f"{_status(heads.get('token_cls'))} | {', '.join(exporters)} | {first.get('max_length') or ''} | {padding} | "
            f"{'yes' if model_type in OPTIMUM_ONNX else ''} | {'; '.join(notes).replace('|', '/').replace(chr(10), ' ')} |"
        )
    issue = sorted(ISSUE_NAMED | (OPTIMUM_ONNX & set(matrix)))
    not_served = [t for t in issue if t not in served]
    lines += ["", f"Issue #20's architectures (the 15 it names + optimum-onnx's supported types that run here): "
              f"{len(issue) - len(not_served)} of {len(issue)} served with both heads"
              + (f"; not served: {', '.join(f'`{t}`' for t in not_served)}." if not_served else ".")]
    lines += ["", f"Not in the matrix: {len(outside)} model types whose tiny config does not run in PyTorch on "
              "`input_ids` + `attention_mask` alone (the reason the probe gave):", ""]
    for model_type in sorted(outside):
        reason = next(iter(outside[model_type].values()))["reason"]
        lines.append(f"- `{model_type}`: {reason[:160]}")
    if not_run:
        lines += ["", f"Not run yet ({len(not_run)}): " + ", ".join(f"`{t}`" for t in not_run)]
    return "\n".join(lines)


def _status(row: dict | None) -> str:
    return {"served": "served", "refused": "refused", "failed": "**failed**"}.get((row or {}).get("status"), "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run")
    run_parser.add_argument("results", type=Path)
    run_parser.add_argument("--types", nargs="*")
    table_parser = commands.add_parser("table")
    table_parser.add_argument("results", type=Path)
    table_parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.results, args.types)
        return
    from headreg.architectures import candidate_model_types

    text = table(read(args.results), candidate_model_types())
    if args.write is None:
        print(text)
        return
    page = args.write.read_text()
    if BEGIN not in page or END not in page:
        sys.exit(f"error: {args.write} has no {BEGIN} ... {END} markers; add them where the table goes")
    head, rest = page.split(BEGIN, 1)
    args.write.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
