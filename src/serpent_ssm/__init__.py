"""serpent-ssm: SeRpEnt (Selective Resampling for Expressive State Space Models) in PyTorch."""

from serpent_ssm.ops.selective_scan import selective_scan

__version__ = "0.1.0"

__all__ = ["selective_scan", "__version__"]
