#!/usr/bin/env python3
"""Loss and accuracy of a (merged) Linear+ReLU model on a dataset: prints JSON.
  eval_merged.py MODEL.safetensors|DIR DATA.safetensors"""
import glob
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file

path, data = sys.argv[1], sys.argv[2]
if os.path.isdir(path):
    path = sorted(glob.glob(os.path.join(path, "*.safetensors")))[0]
w, d = load_file(path), load_file(data)
h = np.maximum(d["inputs"] @ w["fc1.weight"].T + w["fc1.bias"], 0) @ w["fc2.weight"].T + w["fc2.bias"]
h = h.astype(np.float64)
z = h - h.max(1, keepdims=True)
logp = z - np.log(np.exp(z).sum(1, keepdims=True))
y = d["labels"]
print(json.dumps({"loss": float(-logp[np.arange(len(y)), y].mean()), "accuracy": float((h.argmax(1) == y).mean())}))
