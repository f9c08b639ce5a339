"""Importing the library changes nothing global in PyTorch: no module, parameter, buffer or
forward/backward hook is registered process-wide by ``import serpent_ssm`` or any submodule, and
building and stepping a model leaves the global hook tables as they were."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil
    import torch
    import torch.nn.modules.module as module_mod

    def hooks():
        tables = {name: dict(value) for name, value in vars(module_mod).items()
                  if name.startswith("_global_") and isinstance(value, dict)}
        assert len(tables) >= 6, sorted(tables)  # the registration and forward/backward hook tables
        tables["saved_tensors"] = repr(torch._C._autograd._top_saved_tensors_default_hooks(False))
        return tables

    before = hooks()
    import serpent_ssm
    names = [m.name for m in pkgutil.walk_packages(serpent_ssm.__path__, "serpent_ssm.")]
    for name in names:
        if name.startswith("serpent_ssm.hf") or name.startswith("serpent_ssm.analysis.reference_lm"):
            continue  # optional extras (transformers), imported by their own tests
        importlib.import_module(name)
    after_import = hooks()
    from serpent_ssm.models import CausalLM
    from serpent_ssm.models.mixers import make_mixer_factory
    lm = CausalLM(make_mixer_factory("serpent-mamba", 16, causal=True), 259, 16, 2).eval()
    with torch.no_grad():
        state = lm.allocate_state(1)
        for token in (5, 6, 7):
            _, state = lm.step(torch.tensor([token]), state)
    after_use = hooks()
    assert len(names) > 40, len(names)
    print(before == after_import, before == after_use)
    """
)


def test_import_and_use_register_no_global_hook():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
