"""RULER tests run offline: nothing may be downloaded (lm-eval's nltk data is already installed)."""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
