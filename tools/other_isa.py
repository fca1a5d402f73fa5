"""Print the environment that emulates an instruction set below this CPU's, for oneDNN and ATen.

On an AVX-512 machine: AVX2 (what most laptops have). On an AVX2 machine: SSE4.1 and ATen's
portable kernels. Elsewhere (ARM, macOS): ATen's portable kernels. ``make notebooks-other-isa``
runs nbval under it, so an output whose digits depend on the CPU's float sums fails in CI.
"""

from __future__ import annotations

from pathlib import Path


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def other_isa(flags: set[str]) -> dict[str, str]:
    if "avx512f" in flags:
        return {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    if "avx2" in flags:
        return {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
    return {"ATEN_CPU_CAPABILITY": "default"}


if __name__ == "__main__":
    print(" ".join(f"{k}={v}" for k, v in other_isa(cpu_flags()).items()))
