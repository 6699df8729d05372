import os
import sys

import torch

# the model files live at the repository root, next to train.py
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The test models are tiny: a second thread gains nothing, and on a CPU shared with other work
# spin-waiting OpenMP threads slow them several times over. So one thread unless OMP_NUM_THREADS
# asks for more (`OMP_NUM_THREADS=2 python -m pytest` runs the suite with two); subprocesses inherit it.
torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))
