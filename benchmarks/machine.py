"""What every benchmark prints about the machine it ran on: the CPU's name and the instructions that matter."""

from __future__ import annotations

import platform

from headreg.runtime.variants import cpu_flags

# The instructions that decide which variant serves and how fast: AVX2/AVX-512 matmuls, VNNI (int8), BF16/AMX.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
             "asimddp", "bf16", "i8mm")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def isa() -> list[str]:
    flags = cpu_flags()
    return [flag for flag in ISA_FLAGS if flag in flags]
