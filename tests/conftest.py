import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# Measured cost curves go to a folder of this test session, never to the user's cache (subprocesses inherit it).
if "FREE_COST_CACHE" not in os.environ:
    os.environ["FREE_COST_CACHE"] = tempfile.mkdtemp(prefix="free_cost_curves_")
