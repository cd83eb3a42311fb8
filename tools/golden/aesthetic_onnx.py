#!/usr/bin/env python3
"""ONNX exports of the LAION aesthetic heads V1 and V2 for `pixforge`'s ONNX Runtime path, and their
scores by onnxruntime-Python on the ten real ViT-L/14 embeddings.

The graphs are built with onnx.helper (opset 13): L2 normalisation (ReduceL2 + Div) then one Gemm per
linear layer (transB = 1, so the weights keep PyTorch's [out, in] layout). The weights are *external
data*: each initializer points into `{name}.weights`, the layers' weight and bias as raw little-endian
f32 one after the other (V1: weight, bias; V2: layers.0.weight, layers.0.bias, layers.2.weight, …).
Only the small graphs are committed; the test writes the weights file from the released checkpoints
in tests/data/aesthetic (so the 3.7 MB of V2 are not duplicated).
Usage: python tools/golden/aesthetic_onnx.py tests/data/aesthetic tests/fixtures/golden
(torch, onnx, onnxruntime==1.31.1)"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import TensorProto, helper

HEADS = {
    "aesthetic_v1": ("sa_0_4_vit_l_14_linear.pth", [""]),
    "aesthetic_v2": ("sac+logos+ava1-l14-linearMSE.pth", ["layers.0.", "layers.2.", "layers.4.", "layers.6.", "layers.7."]),
}


def build(name, sd, prefixes):
    nodes = [helper.make_node("ReduceL2", ["embedding"], ["norm"], axes=[1], keepdims=1),
             helper.make_node("Div", ["embedding", "norm"], ["h0"])]
    inits, blob, offset = [], bytearray(), 0
    for i, p in enumerate(prefixes):
        for kind in ["weight", "bias"]:
            t = sd[p + kind].float().numpy()
            raw = t.astype("<f4").tobytes()
            init = TensorProto(name=f"{p}{kind}", data_type=TensorProto.FLOAT, dims=list(t.shape))
            init.data_location = TensorProto.EXTERNAL
            for k, v in [("location", f"{name}.weights"), ("offset", str(offset)), ("length", str(len(raw)))]:
                e = init.external_data.add()
                e.key, e.value = k, v
            inits.append(init)
            blob += raw
            offset += len(raw)
        out = "score" if i == len(prefixes) - 1 else f"h{i + 1}"
        nodes.append(helper.make_node("Gemm", [f"h{i}", f"{p}weight", f"{p}bias"], [out], transB=1))
    d_in = sd[prefixes[0] + "weight"].shape[1]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", d_in])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="pixforge-golden")
    model.ir_version = 8
    return model, bytes(blob)


def main(data, out):
    emb = np.concatenate([np.load(f"{data}/vit_l_14_rating{i}.npy") for i in range(10)]).astype(np.float32)
    scores = {}
    for name, (file, prefixes) in HEADS.items():
        sd = torch.load(f"{data}/{file}", map_location="cpu")
        model, blob = build(name, sd, prefixes)
        onnx.save_model(model, f"{out}/{name}.onnx")
        tmp = tempfile.mkdtemp()
        shutil.copy(f"{out}/{name}.onnx", tmp)
        open(f"{tmp}/{name}.weights", "wb").write(blob)
        onnx.checker.check_model(f"{tmp}/{name}.onnx")
        s = onnxruntime.InferenceSession(f"{tmp}/{name}.onnx", providers=["CPUExecutionProvider"])
        scores[name] = s.run(None, {"embedding": emb})[0][:, 0].astype(np.float64).tolist()
        shutil.rmtree(tmp)
    json.dump({"onnxruntime": onnxruntime.__version__, **scores}, open(f"{out}/aesthetic_onnx.json", "w"), indent=1)
    print(scores)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
