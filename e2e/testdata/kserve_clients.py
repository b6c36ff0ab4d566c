"""Drive a Shoal peer with the KServe SDK's own inference clients, unchanged.

Usage: kserve_clients.py HTTP_HOST:PORT GRPC_HOST:PORT MODEL INPUT_FILE TOKEN

INPUT_FILE holds the 1x3x32x64 FP32 image, little-endian. TOKEN is a
Shoal-After token passed as a request header (REST) and as metadata (gRPC).
Prints one JSON object: what each client saw.
"""

import asyncio
import json
import sys

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

http_url, grpc_url, model, input_file, token = sys.argv[1:6]
image = np.fromfile(input_file, dtype="<f4").reshape(1, 3, 32, 64)
demands = {"Shoal-After": token, "Shoal-Timeout": "60s"}


def request(name, binary):
    inp = InferInput("x", list(image.shape), "FP32")
    inp.set_data_from_numpy(image, binary_data=binary)
    return InferRequest(model_name=name, infer_inputs=[inp])


def outputs(res):
    return {o.name: o.as_numpy().astype(np.float64).ravel().tolist() for o in res.outputs}


async def rest(out):
    base = "http://" + http_url
    c = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=60))
    try:
        out["rest_live"] = await c.is_server_live(base)
        out["rest_ready"] = await c.is_server_ready(base)
        out["rest_model_ready"] = await c.is_model_ready(base, model, headers=dict(demands))
        # A copy of the headers per call: the client adds to the dict it is given.
        for binary in (False, True):
            got = {}
            res = await c.infer(base, request(model, binary), model_name=model, headers=dict(demands), response_headers=got)
            out["rest_binary" if binary else "rest_json"] = outputs(res)
            # The REST client drops model_version from the response body; the
            # peer also names the version it ran in a header.
            out["rest_version"] = {k.lower(): v for k, v in got.items()}.get("shoal-model-version")
        try:
            await c.infer(base, request("no-such-model", False), model_name="no-such-model")
        except httpx.HTTPStatusError as e:
            out["rest_unknown_model"] = {"status": str(e.response.status_code), "message": str(e)}
    finally:
        await c.close()


async def grpc_client(out):
    c = InferenceGRPCClient(grpc_url, timeout=60)
    md = [(k.lower(), v) for k, v in demands.items()]  # gRPC metadata keys are lower case
    try:
        out["grpc_live"] = await c.is_server_live()
        out["grpc_ready"] = await c.is_server_ready()
        out["grpc_model_ready"] = await c.is_model_ready(model, headers=md)
        res = await c.infer(request(model, True), headers=md)
        out["grpc"] = outputs(res)
        out["grpc_version"] = res.model_version
        try:
            await c.infer(request("no-such-model", True))
        except grpc.aio.AioRpcError as e:
            out["grpc_unknown_model"] = {"status": e.code().name, "message": e.details()}
    finally:
        await c.close()


async def main():
    out = {}
    await rest(out)
    await grpc_client(out)
    print(json.dumps(out))


asyncio.run(main())
