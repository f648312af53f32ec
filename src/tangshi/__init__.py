"""tangshi: character-level RNN, LSTM and GRU language models of Tang poetry."""

import os

# OpenMP threads that spin while waiting make 2 torch threads ~7x slower whenever another process shares
# the cores (CI, benchmarks, sweeps). This must be set before torch loads, so it lives at package import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
