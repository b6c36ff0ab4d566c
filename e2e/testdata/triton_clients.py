"""Drive a Shoal peer with NVIDIA Triton's own Python clients, unchanged.

Usage: triton_clients.py HTTP_HOST:PORT GRPC_HOST:PORT MODEL INPUT_FILE TOKEN

INPUT_FILE holds the 1x3x32x64 FP32 image, little-endian. TOKEN is a
Shoal-After token passed as a request header (HTTP) and as metadata
(gRPC). Prints one JSON object: what each client saw.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

http_url, grpc_url, model, input_file, token = sys.argv[1:6]
image = np.fromfile(input_file, dtype="<f4").reshape(1, 3, 32, 64)
# A copy per call: tritonclient's HTTP infer adds Inference-Header-Content-
# Length to the dict it is given, which would then leak into the next call.
demands = {"Shoal-After": token, "Shoal-Timeout": "60s"}


def headers():
    return dict(demands)


def metadata():  # gRPC metadata keys are lower case
    return {k.lower(): v for k, v in demands.items()}


out = {}


def failure(call):
    try:
        call()
    except InferenceServerException as e:
        return {"status": str(e.status()), "message": e.message()}
    return None


# HTTP: binary tensors both ways, then JSON tensors.
h = httpclient.InferenceServerClient(url=http_url)
out["http_live"] = h.is_server_live()
out["http_model_ready"] = h.is_model_ready(model, headers=headers())
md = h.get_model_metadata(model, headers=headers())
out["http_metadata"] = {"name": md["name"], "inputs": md["inputs"], "outputs": md["outputs"]}
names = [o["name"] for o in md["outputs"]]
for binary in (True, False):
    inp = httpclient.InferInput("x", list(image.shape), "FP32")
    inp.set_data_from_numpy(image, binary_data=binary)
    req_out = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
    r = h.infer(model, [inp], outputs=req_out, headers=headers())
    out["http_binary" if binary else "http_json"] = {n: r.as_numpy(n).astype(np.float64).ravel().tolist() for n in names}
    out["http_version"] = r.get_response()["model_version"]
inp = httpclient.InferInput("x", list(image.shape), "FP32")
inp.set_data_from_numpy(image)
out["http_unknown_model"] = failure(lambda: h.infer("no-such-model", [inp]))
bad = httpclient.InferInput("x", [1, 1, 32, 64], "FP32")  # one channel; the model takes three
bad.set_data_from_numpy(np.zeros((1, 1, 32, 64), dtype=np.float32))
out["http_bad_shape"] = failure(lambda: h.infer(model, [bad]))
h.close()

# gRPC: the client always sends raw_input_contents.
g = grpcclient.InferenceServerClient(url=grpc_url)
out["grpc_live"] = g.is_server_live()
out["grpc_server_ready"] = g.is_server_ready()
out["grpc_model_ready"] = g.is_model_ready(model, headers=metadata())
gmd = g.get_model_metadata(model, headers=metadata(), as_json=True)
out["grpc_metadata"] = {"name": gmd["name"], "inputs": gmd["inputs"], "outputs": gmd["outputs"]}
inp = grpcclient.InferInput("x", list(image.shape), "FP32")
inp.set_data_from_numpy(image)
r = g.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(n) for n in names], headers=metadata())
out["grpc"] = {n: r.as_numpy(n).astype(np.float64).ravel().tolist() for n in names}
out["grpc_version"] = r.get_response().model_version
out["grpc_unknown_model"] = failure(lambda: g.infer("no-such-model", [inp]))
bad = grpcclient.InferInput("x", [1, 1, 32, 64], "FP32")  # one channel; the model takes three
bad.set_data_from_numpy(np.zeros((1, 1, 32, 64), dtype=np.float32))
out["grpc_bad_shape"] = failure(lambda: g.infer(model, [bad]))
out["grpc_stale"] = failure(lambda: g.infer(model, [inp], headers={"shoal-max-staleness": "0s"}))
g.close()

json.dump(out, sys.stdout)
