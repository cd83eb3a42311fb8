#!/usr/bin/env python3
"""The Python anchor of the captioning client benchmark: what a user writes with the `openai` package
(AsyncOpenAI, an asyncio.Semaphore of CONCURRENCY, one chat completion per image as a base64 data URL,
the same request as pixforge's), over the images of WebDataset shards. Prints JSON: captions, seconds.
Usage: caption_openai_py.py ENDPOINT SHARD_DIR CONCURRENCY"""
import asyncio
import base64
import glob
import json
import sys
import tarfile
import time

from openai import AsyncOpenAI

PROMPT = "Describe this image and its style in a very detailed manner"


def images(shard_dir):
    for path in sorted(glob.glob(f"{shard_dir}/*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                if m.name.endswith((".jpg", ".png", ".webp")):
                    yield tar.extractfile(m).read()


async def main(endpoint, shard_dir, concurrency):
    client = AsyncOpenAI(base_url=f"{endpoint}/v1", api_key="none", max_retries=5, timeout=300)
    sem = asyncio.Semaphore(concurrency)
    done = 0

    async def one(data):
        nonlocal done
        url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
        async with sem:
            r = await client.chat.completions.create(
                model="bench", temperature=0.2, top_p=1.0, max_tokens=512, seed=0,
                messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                       {"type": "text", "text": PROMPT}]}])
        if r.choices[0].message.content:
            done += 1

    blobs = list(images(shard_dir))
    t0 = time.perf_counter()
    await asyncio.gather(*(one(b) for b in blobs))
    print(json.dumps({"captions": done, "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
