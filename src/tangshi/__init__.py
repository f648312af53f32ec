"""tangshi: character-level language models of Tang poetry (RNN, LSTM, GRU, minimal RNNs, a Transformer)."""

import os
import sys
import warnings

# OpenMP threads that spin while waiting make 2 torch threads ~7x slower whenever another process shares
# the cores (CI, benchmarks, sweeps). This must be set before torch loads, so it lives at package import;
# an entry point that imports torch first must set it itself.
if "OMP_WAIT_POLICY" not in os.environ and "torch" in sys.modules:
    warnings.warn(
        "torch was imported before tangshi with OMP_WAIT_POLICY unset: its OpenMP threads will spin "
        "(set OMP_WAIT_POLICY=PASSIVE, or import tangshi first)",
        RuntimeWarning,
        stacklevel=2,
    )
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.2.0"
