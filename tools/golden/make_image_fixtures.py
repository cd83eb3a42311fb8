"""Small decoder edge-case images made with Pillow (a reference encoder), committed under
tests/fixtures/images/. Run: /tmp/golden/bin/pip install pillow numpy &&
/tmp/golden/bin/python tools/golden/make_image_fixtures.py tests/fixtures/images
"""
import json
import sys

import numpy as np
from PIL import Image

out = sys.argv[1]
expect = {}

# CMYK JPEG: left half pure cyan (C=255), right half pure yellow (Y=255).
a = np.zeros((16, 32, 4), np.uint8)
a[:, :16, 0] = 255
a[:, 16:, 2] = 255
Image.frombytes("CMYK", (32, 16), a.tobytes()).save(f"{out}/cmyk.jpg", quality=95)
rgb = np.asarray(Image.open(f"{out}/cmyk.jpg").convert("RGB"))
expect["cmyk.jpg"] = {"size": [32, 16], "pixel_4_8": rgb[8, 4].tolist(), "pixel_28_8": rgb[8, 28].tolist()}

# 16-bit greyscale PNG with a horizontal ramp.
ramp = (np.tile(np.linspace(0, 65535, 40), (20, 1))).astype(np.uint16)
Image.fromarray(ramp).save(f"{out}/grey16.png")
expect["grey16.png"] = {"size": [40, 20]}

# Grey + alpha PNG: left half transparent black, right half opaque black.
la = np.zeros((10, 20, 2), np.uint8)
la[:, 10:, 1] = 255
Image.frombytes("LA", (20, 10), la.tobytes()).save(f"{out}/grey_alpha.png")
expect["grey_alpha.png"] = {"size": [20, 10], "pixel_2_5": [255, 255, 255], "pixel_15_5": [0, 0, 0]}

# JPEG stored 40x20 with EXIF Orientation=6 (display rotated 90 degrees clockwise: 20x40).
img = Image.new("RGB", (40, 20), (200, 30, 30))
img.paste((30, 30, 200), (0, 0, 10, 20))  # blue stripe on the stored left edge
exif = Image.Exif()
exif[0x0112] = 6
img.save(f"{out}/exif_rotate90.jpg", quality=95, exif=exif.tobytes())
from PIL import ImageOps
shown = np.asarray(ImageOps.exif_transpose(Image.open(f"{out}/exif_rotate90.jpg")).convert("RGB"))
expect["exif_rotate90.jpg"] = {"size": [shown.shape[1], shown.shape[0]], "pixel_10_2": shown[2, 10].tolist()}

json.dump(expect, open(f"{out}/expected.json", "w"), indent=1)
print(json.dumps(expect))
