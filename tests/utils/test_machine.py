import os

import torch

from serpent_ssm.utils.machine import machine_info

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma f16c

processor\t: 1
model name\t: another processor
flags\t\t: avx512f
"""


def test_machine_info_reads_the_first_processor(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    info = machine_info("cpu", cpuinfo=path)
    assert info == {
        "cpu": "AMD EPYC (family 25, model 1)",
        "simd": ["avx2", "fma"],  # the first processor's, in _SIMD's order; avx512f is the second's
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": "cpu",
    }


def test_machine_info_without_cpuinfo_names_the_platform(tmp_path):
    info = machine_info(cpuinfo=tmp_path / "missing")
    assert info["cpu"] and info["simd"] == [] and info["device"] == "cpu"
