"""This machine's limit for the ingest work: the one-core cost of decode + resize + encode of the
corpus with OpenCV (libjpeg-turbo), as img2dataset does it (INTER_AREA down, LANCZOS4 up, keep_ratio
to 512, JPEG quality 95) plus sha256, times the core count.

python opencv_limit.py CORPUS_IMG_DIR [IMAGE_SIZE] [QUALITY]
Prints one JSON line.
"""
import glob
import hashlib
import json
import os
import sys
import time

import cv2

cv2.setNumThreads(1)
d = sys.argv[1]
size = int(sys.argv[2]) if len(sys.argv) > 2 else 512
quality = int(sys.argv[3]) if len(sys.argv) > 3 else 95
files = sorted(glob.glob(os.path.join(d, "*.jpg")))
blobs = [open(f, "rb").read() for f in files]
import numpy as np


def one_pass():
    t0 = time.perf_counter()
    for b in blobs:
        work(b)
    return time.perf_counter() - t0


def work(b):
    img = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)
    h, w = img.shape[:2]
    s = size / min(h, w)
    nw, nh = round(w * s), round(h * s)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LANCZOS4
    img = cv2.resize(img, (nw, nh), interpolation=interp)
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    hashlib.sha256(enc.tobytes()).hexdigest()


# Best of three passes: the limit is taken at its highest, so ratios against it are conservative.
dt = min(one_pass() for _ in range(3))
cores = os.cpu_count()
print(json.dumps({"images": len(blobs), "one_core_s": dt, "one_core_img_s": len(blobs) / dt,
                  "cores": cores, "limit_img_s": cores * len(blobs) / dt, "opencv": cv2.__version__}))
