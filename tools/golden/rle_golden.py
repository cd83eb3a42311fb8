"""Golden values for the COCO-RLE decoder: pycocotools' area, toBbox and a checksum of the decoded mask
for every mask of tests/data/sa1b/coco_rle_masks_734.json.

Run: python3 -m venv /tmp/golden && /tmp/golden/bin/pip install pycocotools numpy
     /tmp/golden/bin/python tools/golden/rle_golden.py tests/data/sa1b/coco_rle_masks_734.json \
         tests/fixtures/golden/rle_734.json
"""
import hashlib
import json
import sys

import numpy as np
from pycocotools import mask as M

src, dst = sys.argv[1], sys.argv[2]
masks = json.load(open(src))
out = []
for m in masks:
    seg = {"size": m["segmentation"]["size"], "counts": m["segmentation"]["counts"].encode()}
    dec = M.decode(seg)  # h x w, uint8
    # column-major order = index x*h + y, as the RLE itself
    colmajor = np.asfortranarray(dec).ravel(order="F").astype(np.uint8)
    out.append({
        "area": int(M.area(seg)),
        "bbox": [int(round(v)) for v in M.toBbox(seg).tolist()],
        "mask_sha256": hashlib.sha256(colmajor.tobytes()).hexdigest(),
    })
json.dump({"source": "cocoapi results/instances_val2014_fakesegm100_results.json", "masks": out},
          open(dst, "w"), separators=(",", ":"))
print(len(out), "masks, total area", sum(o["area"] for o in out))
