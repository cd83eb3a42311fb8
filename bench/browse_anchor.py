"""The browser benchmark's anchor (bench/browse.sh): what a curator does without a viewer — the
shard parquets of a dataset read into pandas with pyarrow, then the same views as the browser's
pages: the first and a deep page of 60 rows, a status filter, a sort by a score (largest first),
a reason filter, and rows whose alt-text contains a word (a substring test, not a tagger).
Prints one JSON object of seconds."""
import glob
import json
import sys
import time

import pyarrow.dataset as pads

dataset, sort, noun = sys.argv[1], sys.argv[2], sys.argv[3]
PAGE = 60
out = {}


def timed(name, f):
    t = time.perf_counter()
    r = f()
    out[name] = time.perf_counter() - t
    return r


files = sorted(glob.glob(f"{dataset}/*.parquet"))
df = timed("open (every shard parquet read into pandas)", lambda: pads.dataset(files, format="parquet").to_table().to_pandas())
rows = len(df)
deep = max(rows // PAGE // 2, 1)
timed("first page", lambda: df.iloc[:PAGE].to_dict("records"))
timed("deep page", lambda: df.iloc[(deep - 1) * PAGE : deep * PAGE].to_dict("records"))
timed("status filter", lambda: df[df["status"] == "failed_to_download"].iloc[:PAGE].to_dict("records"))
timed("sort by score", lambda: df.sort_values(sort, ascending=False, na_position="last", kind="stable").iloc[:PAGE].to_dict("records"))
timed(
    "reason filter",
    lambda: df[df["error_message"].fillna("").str.startswith("HTTP 404")].iloc[:PAGE].to_dict("records"),
)
timed("noun filter (substring of the alt-text)", lambda: df[df["caption"].str.contains(noun, regex=False)].iloc[:PAGE].to_dict("records"))
print(json.dumps({"rows": rows, "seconds": out}))
