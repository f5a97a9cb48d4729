"""Talking to `tandem serve` from Python, both ways: the OpenAI SDK and gRPC.

    ./scripts/py/venv.sh                          # prints the python with openai + grpcio
    tandem serve --listen 127.0.0.1:8642 &        # or the default Unix socket
    PY=$(./scripts/py/venv.sh); $PY examples/python/tandem_client.py 127.0.0.1:8642

gRPC stubs are generated here from proto/tandem/v1/device.proto with grpcio-tools.
"""

import importlib
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc
from openai import OpenAI

addr = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8642"

# 1. OpenAI-compatible HTTP. `x-tandem-route` asks for local, remote or auto (the default).
client = OpenAI(base_url=f"http://{addr}/v1", api_key=os.environ.get("TANDEM_TOKEN", "unused"))
raw = client.chat.completions.with_raw_response.create(
    model="device", messages=[{"role": "user", "content": "The king said"}], max_tokens=24,
    temperature=0, extra_headers={"x-tandem-route": "auto"})
r = raw.parse()
print(r.choices[0].message.content)
print("ran", raw.headers["x-tandem-route"], "because", r.model_extra["tandem"]["reason"])

for chunk in client.chat.completions.create(
        model="device", messages=[{"role": "user", "content": "Once upon a time"}],
        max_tokens=24, stream=True):
    for c in chunk.choices:
        print(c.delta.content or "", end="", flush=True)
    if "tandem" in (chunk.model_extra or {}):
        print("\n[route:", chunk.model_extra["tandem"]["route"], "]")

# 2. gRPC tandem.v1.Device.
root = os.path.join(os.path.dirname(__file__), "..", "..", "proto", "proto")
out = tempfile.mkdtemp()
for f in ("tandem/v1/inference.proto", "tandem/v1/device.proto"):
    protoc.main(["protoc", f"-I{root}", f"--python_out={out}", f"--grpc_python_out={out}",
                 f"{root}/{f}"])
sys.path.insert(0, out)
pb = importlib.import_module("tandem.v1.device_pb2")
pb_grpc = importlib.import_module("tandem.v1.device_pb2_grpc")
# For the Unix socket: grpc.insecure_channel("unix:/run/user/1000/tandem/daemon.sock",
#     options=[("grpc.default_authority", "localhost")])
stub = pb_grpc.DeviceStub(grpc.insecure_channel(addr))
md = [("authorization", "Bearer " + os.environ["TANDEM_TOKEN"])] if "TANDEM_TOKEN" in os.environ else None
for ev in stub.Generate(pb.DeviceGenerateRequest(
        prompt="The king said", options=pb.GenerateOptions(max_tokens=24)), metadata=md):
    kind = ev.WhichOneof("event")
    if kind == "delta":
        print(ev.delta.text, end="", flush=True)
    elif kind == "summary":
        s = ev.summary
        print(f"\n[ran {s.route}: {s.reason}; {s.prompt_tokens}+{s.completion_tokens} tokens]")
