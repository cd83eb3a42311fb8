#!/usr/bin/env python3
"""Golden scores of the LAION aesthetic heads on the ten real CLIP ViT-L/14 embeddings of
tests/data/aesthetic, computed as the reference code does:
- V1 (LAION-AI/aesthetic-predictor): `nn.Linear(768, 1)` on the L2-normalised embedding;
- V2 (christophschuhmann/improved-aesthetic-predictor `simple_inference.py`): the MLP
  768→1024→128→64→16→1 (Dropout layers are identity at inference) on the L2-normalised embedding.
Usage: python tools/golden/aesthetic.py tests/data/aesthetic tests/fixtures/golden/aesthetic.json (torch, numpy)"""
import json
import sys

import numpy as np
import torch
import torch.nn as nn


def main(data, out):
    emb = np.concatenate([np.load(f"{data}/vit_l_14_rating{i}.npy") for i in range(10)]).astype(np.float32)
    x = torch.from_numpy(emb)
    x = x / x.norm(dim=-1, keepdim=True)
    v1 = nn.Linear(768, 1)
    v1.load_state_dict(torch.load(f"{data}/sa_0_4_vit_l_14_linear.pth", map_location="cpu"))
    v2 = nn.Sequential(nn.Linear(768, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                       nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))
    sd = torch.load(f"{data}/sac+logos+ava1-l14-linearMSE.pth", map_location="cpu")
    v2.load_state_dict({k.removeprefix("layers."): v for k, v in sd.items()})
    v1.eval(), v2.eval()
    with torch.no_grad():
        res = {"v1": v1(x)[:, 0].double().tolist(), "v2": v2(x)[:, 0].double().tolist()}
    json.dump(res, open(out, "w"), indent=1)
    print(res)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
