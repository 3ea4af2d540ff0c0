import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# FREE_TEST_DEVICE=cuda runs the device-aware tests (toy_models.TEST_DEVICE) there; refuse a device that is absent.
if torch.device(os.environ.get("FREE_TEST_DEVICE", "cpu")).type == "cuda" and not torch.cuda.is_available():
    raise RuntimeError(f"FREE_TEST_DEVICE={os.environ['FREE_TEST_DEVICE']}: CUDA is not available; unset it to test on the CPU")

# Measured cost curves go to a folder of this test session, never to the user's cache (subprocesses inherit it).
if "FREE_COST_CACHE" not in os.environ:
    os.environ["FREE_COST_CACHE"] = tempfile.mkdtemp(prefix="free_cost_curves_")
