"""Backends side by side where headreg itself is not installed: ``python benchmarks/backend_probe.py``.

Needs only torch, transformers, openvino (onnxruntime when present). A MiniLM-shaped BERT (random init: the
speed of all-MiniLM-L6-v2, not its answers), pinned to 2 cores with 2 threads, engines interleaved: PyTorch fp32
sdpa / eager, PyTorch bf16 autocast, OpenVINO bf16 and f32, onnxruntime fp32. Also checks whether OpenVINO
bf16 gives a row the same logits alone and padded to longer lengths (the reason the bf16 variant pads every
batch to a multiple of 32 tokens). Writes ``$OUT/probe.json``. The AMX figures in docs/performance.md are from it.
"""
import json, os, time
os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[-2:]))
import numpy as np
import torch
from transformers import BertConfig, BertModel

OUT = os.environ.get("OUT", "/tmp")
res = {"load": os.getloadavg()}
flags = open("/proc/cpuinfo").read().split("flags")[1].split("\n")[0]
res["isa"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f" {f}" in flags]
print(res, flush=True)
torch.set_num_threads(2)
torch.manual_seed(0)
cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)


class M(torch.nn.Module):
    def __init__(self, attn):
        super().__init__()
        c = BertConfig(**cfg.to_dict())
        c._attn_implementation = attn
        self.bert = BertModel(c)
        self.head = torch.nn.Linear(384, 2)

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.head(self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).pooler_output)


sdpa = M("sdpa").eval()
eager = M("eager").eval()
eager.load_state_dict(sdpa.state_dict())


def feed(b, n, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1996, 29000, (b, n)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


import openvino as ov

core = ov.Core()
path = "/tmp/m.onnx"
try:
    f = feed(2, 16)
    torch.onnx.export(eager, tuple(torch.from_numpy(f[k]) for k in ("input_ids", "attention_mask", "token_type_ids")), path,
                      input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["logits"],
                      dynamic_axes={k: {0: "b", 1: "n"} for k in ("input_ids", "attention_mask", "token_type_ids")},
                      opset_version=17, dynamo=False)
    ovm = core.read_model(path)
    res["ov_source"] = "onnx (torchscript exporter)"
except Exception as exc:
    print("onnx export failed:", repr(exc)[:300], flush=True)
    f = feed(2, 16)
    ovm = ov.convert_model(eager, example_input={k: torch.from_numpy(v) for k, v in f.items()})
    res["ov_source"] = "ov.convert_model(torch)"
ovm.reshape({p.get_any_name(): ov.PartialShape([-1, -1]) for p in ovm.inputs})
print("ov source", res["ov_source"], flush=True)


def ovc(prec):
    c = core.compile_model(ovm, "CPU", {"INFERENCE_PRECISION_HINT": prec, "INFERENCE_NUM_THREADS": 2, "PERFORMANCE_HINT": "LATENCY"})
    r = c.create_infer_request()
    out = c.outputs[0]
    return lambda fd: r.infer(fd)[out]


def trun(model, bf16=False):
    def run(fd):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(**{k: torch.from_numpy(v) for k, v in fd.items()}).float().numpy()
    return run


engines = {"torch-sdpa": trun(sdpa), "torch-eager": trun(eager), "torch-bf16": trun(sdpa, True),
           "ov-bf16": ovc("bf16"), "ov-f32": ovc("f32")}
try:
    import onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    engines["ort-fp32"] = lambda fd: s.run(None, fd)[0]
except Exception as exc:
    print("no onnxruntime:", repr(exc)[:200], flush=True)

# invariance on this ISA: row alone at its own length vs padded
def pad(ids, L):
    n = len(ids)
    a = np.zeros((1, L), np.int64); a[0, :n] = ids
    m = np.zeros((1, L), np.int64); m[0, :n] = 1
    return {"input_ids": a, "attention_mask": m, "token_type_ids": np.zeros_like(a)}

inv = {}
run = engines["ov-bf16"]
rng = np.random.default_rng(1)
for n in (20, 30, 42, 60, 100):
    ids = np.concatenate([[101], rng.integers(2000, 29000, n - 2), [102]])
    base = run(pad(ids, n))
    row = {str(L): float(np.abs(run(pad(ids, L)) - base).max()) for L in sorted({n + 1, n + 5, -(-n // 16) * 16, -(-n // 32) * 32, -(-n // 64) * 64, 128, 256, 512}) if L > n}
    for m in (16, 32, 64):
        ref = run(pad(ids, -(-n // m) * m))
        row[f"pad{m}_vs_larger"] = max(float(np.abs(run(pad(ids, -(-n // m) * m + m * k)) - ref).max()) for k in (1, 2, 5))
        row[f"pad{m}_vs_512"] = float(np.abs(run(pad(ids, 512)) - ref).max())
    # batch size at the same length
    others = rng.integers(2000, 29000, (7, len(ids)))
    fb = {"input_ids": np.vstack([ids[None], others]), "attention_mask": np.ones((8, len(ids)), np.int64)}
    fb["token_type_ids"] = np.zeros_like(fb["input_ids"])
    row["batch8_same_len"] = float(np.abs(run(fb)[0] - base[0]).max())
    inv[n] = row
    print("inv", n, row, flush=True)
res["invariance_ov_bf16"] = inv

speed = {}
for b, n in [(1, 128), (8, 128), (32, 128), (1, 16), (8, 16)]:
    fd = feed(b, n)
    ref = engines["torch-sdpa"](fd)
    diffs = {k: float(np.abs(e(fd) - ref).max()) for k, e in engines.items()}
    t = {k: [] for k in engines}
    start = time.time()
    while time.time() - start < 12 or min(len(v) for v in t.values()) < 3:
        for k, e in engines.items():
            s0 = time.perf_counter(); e(fd); t[k].append(time.perf_counter() - s0)
        if min(len(v) for v in t.values()) >= 60:
            break
    p50 = {k: float(np.median(v) * 1e3) for k, v in t.items()}
    best = min((k for k in p50 if k.startswith("torch")), key=p50.get)
    speed[f"{b}x{n}"] = {"p50_ms": p50, "logit_diff_vs_torch_fp32": diffs, "fastest_torch": best,
                        "ratio_vs_fastest_torch": {k: p50[best] / v for k, v in p50.items()}, "reps": len(t["ov-bf16"]),
                        "load": os.getloadavg()[0]}
    print(b, n, json.dumps(speed[f"{b}x{n}"]), flush=True)
res["speed"] = speed
res["versions"] = {"torch": torch.__version__, "openvino": ov.__version__}
json.dump(res, open(os.path.join(OUT, "probe.json"), "w"), indent=1)
print("done", flush=True)
