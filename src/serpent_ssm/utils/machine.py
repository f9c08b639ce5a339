"""What a run ran on: the processor, its vector instructions, cores and threads, torch's version and
the accelerator (``machine_info``). Tokens per second only compare between runs on the same machine:
the same Mamba run on ListOps went at 5,653 tokens/s on a 2-core AMD EPYC with AVX2 and at 13,923 on
the 2-core machine of earlier runs, so every run's ``summary.json`` records it."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["machine_info"]

# the vector extensions that set the speed of torch's CPU kernels and of ours (``-march=native``)
_SIMD = ("avx512f", "avx512_bf16", "amx_tile", "avx2", "fma", "neon", "asimd", "sve")


def _cpuinfo(path: Path) -> dict[str, str]:
    """The first processor's fields of ``path`` (``/proc/cpuinfo``; empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def machine_info(device: str | torch.device = "cpu", cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """``{"cpu", "simd", "cores", "threads", "torch", "device"}``: the processor's model name (with
    its family and model numbers where ``cpuinfo`` gives them: x86 names can be as generic as
    "AMD EPYC"), the vector extensions of ``_SIMD`` it
    has, the logical cores, torch's intra-op threads, torch's version and ``device`` (for CUDA, the
    GPU's name). ``cpuinfo``: where to read the processor from (Linux's file by default)."""
    info = _cpuinfo(Path(cpuinfo))
    cpu = info.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:
        cpu += f" (family {info['cpu family']}, model {info['model']})"
    flags = set((info.get("flags") or info.get("Features") or "").split())
    dev = torch.device(device)
    return {
        "cpu": cpu,
        "simd": [f for f in _SIMD if f in flags],
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
    }
