import os
import sys

import torch

# the model files live at the repository root, next to train.py
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The test models are tiny: a second thread gains nothing, and on a CPU shared with other work
# spin-waiting OpenMP threads slow them several times over. Subprocesses inherit the variable.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"
