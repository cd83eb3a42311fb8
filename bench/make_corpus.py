"""Builds the ingest benchmark corpus: N JPEGs of web sizes (longer side 256-1600 px, aspect 1:2 to
2:1, quality 75-95, 4:2:0) cut from the bundled real photos with a seeded RNG, plus `urls.txt` and
`urls.parquet` pointing at a loopback server.

python make_corpus.py OUT_DIR N BASE_URL SHARED_IMAGES_DIR
"""
import os
import random
import sys

from PIL import Image

out, n, base, shared = sys.argv[1], int(sys.argv[2]), sys.argv[3].rstrip("/"), sys.argv[4]
os.makedirs(os.path.join(out, "img"), exist_ok=True)
names = ["astronaut.png", "chelsea.png", "coffee.png", "camera.png", "rocket.jpg", "hubble_deep_field.jpg"]
photos = [Image.open(os.path.join(shared, n)).convert("RGB") for n in names]
rng = random.Random(1234)
urls = []
for i in range(n):
    src = photos[i % len(photos)]
    w, h = src.size
    aspect = rng.uniform(0.5, 2.0)
    cw = rng.randint(w // 3, w)
    ch = max(16, min(h, int(cw / aspect)))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    crop = src.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    longer = rng.randint(256, 1600)
    s = longer / max(crop.size)
    crop = crop.resize((max(16, round(crop.size[0] * s)), max(16, round(crop.size[1] * s))), Image.LANCZOS)
    path = os.path.join(out, "img", f"{i:05d}.jpg")
    crop.save(path, quality=rng.randint(75, 95), subsampling=2)
    urls.append(f"{base}/img/{i:05d}.jpg")
with open(os.path.join(out, "urls.txt"), "w") as f:
    f.write("\n".join(urls) + "\n")
print(f"{n} images in {out}/img")
