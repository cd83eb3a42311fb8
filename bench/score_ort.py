#!/usr/bin/env python3
"""The onnxruntime-Python anchor of `bench/score.sh`: the same ONNX CLIP tower over the same shard
tars, end to end as a Python pipeline does it — PIL decode, CLIPImageProcessor (size/crop given),
batches of 32 through an InferenceSession with 2 intra-op threads. Prints JSON: images/s end to end
and for the model alone, peak RSS.
Usage: python bench/score_ort.py TOWER.onnx SHARDS_DIR SIZE   (onnxruntime, transformers, pillow)"""
import glob
import io
import json
import resource
import sys
import tarfile
import time

import numpy as np
import onnxruntime as ort
from PIL import Image
from transformers import CLIPImageProcessor


def main(tower, shards, size):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(tower, opts, providers=["CPUExecutionProvider"])
    proc = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    start = time.perf_counter()
    model_s, n, batch = 0.0, 0, []

    def flush():
        nonlocal model_s, n, batch
        if batch:
            px = proc(images=batch, return_tensors="np")["pixel_values"].astype(np.float32)
            t = time.perf_counter()
            sess.run(None, {"pixel_values": px})
            model_s += time.perf_counter() - t
            n += len(batch)
            batch = []

    for tar in sorted(glob.glob(f"{shards}/*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith((".jpg", ".png", ".webp")):
                    batch.append(Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB"))
                    if len(batch) == 32:
                        flush()
    flush()
    total = time.perf_counter() - start
    print(json.dumps({"images": n, "images_per_s": n / total, "model_images_per_s": n / model_s,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "onnxruntime": ort.__version__}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
