"""SA-1B-format benchmark tar: N images with a 1500 px short side (as released SA-1B) and an
annotation JSON each (a few rectangular masks in COCO compressed RLE).

python make_sa1b.py OUT.tar N SHARED_IMAGES_DIR
"""
import io
import json
import random
import sys
import tarfile

from PIL import Image


def rle_string(counts):
    """pycocotools' rleToString."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        while True:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
            if not more:
                break
    return "".join(out)


def rect_counts(h, w, x0, y0, x1, y1):
    """Column-major runs of the rectangle mask [x0, x1) x [y0, y1)."""
    counts = [x0 * h + y0]
    for x in range(x0, x1):
        counts.append(y1 - y0)
        counts.append(h - (y1 - y0) if x + 1 < x1 else (h - y1) + (w - x1) * h)
    return counts


out, n, shared = sys.argv[1], int(sys.argv[2]), sys.argv[3]
names = ["astronaut.png", "chelsea.png", "coffee.png", "camera.png", "rocket.jpg", "hubble_deep_field.jpg"]
photos = [Image.open(f"{shared}/{p}").convert("RGB") for p in names]
rng = random.Random(7)
with tarfile.open(out, "w") as tar:
    for i in range(n):
        src = photos[i % len(photos)]
        landscape = rng.random() < 0.7
        w, h = (2250, 1500) if landscape else (1500, 2000)
        sw, sh = src.size
        cw, ch = int(sw * rng.uniform(0.7, 1.0)), int(sh * rng.uniform(0.7, 1.0))
        x, y = rng.randint(0, sw - cw), rng.randint(0, sh - ch)
        img = src.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90, subsampling=2)
        anns = []
        for k in range(3):
            x0, y0 = rng.randint(0, w // 2), rng.randint(0, h // 2)
            x1, y1 = x0 + rng.randint(10, w // 2), y0 + rng.randint(10, h // 2)
            counts = rect_counts(h, w, x0, y0, x1, y1)
            anns.append({"bbox": [x0, y0, x1 - x0 - 1, y1 - y0 - 1], "area": (x1 - x0) * (y1 - y0),
                         "segmentation": {"size": [h, w], "counts": rle_string(counts)}, "id": k})
        meta = json.dumps({"image": {"image_id": i, "width": w, "height": h, "file_name": f"sa_{i}.jpg"},
                           "annotations": anns}).encode()
        for name, data in ((f"sa_{i}.jpg", buf.getvalue()), (f"sa_{i}.json", meta)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
print(f"{n} SA-1B-format samples in {out}")
