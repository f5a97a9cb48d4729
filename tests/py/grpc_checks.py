"""A grpcio client of `tandem.v1.Device`, its stubs generated from proto/tandem/v1/device.proto
with grpcio-tools at run time (driven by tests/daemon_grpc.rs).

    python grpc_checks.py CHECK --target 127.0.0.1:PORT --socket PATH --proto-dir DIR [--token T]

CHECK: rpcs (every RPC, errors, cancel mid-stream, deadline exceeded) or auth. Prints `ok CHECK`.
"""

import argparse
import importlib
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc


def stubs(proto_dir):
    out = tempfile.mkdtemp(prefix="tandem-grpc-")
    for f in ("tandem/v1/inference.proto", "tandem/v1/device.proto"):
        rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}",
                          f"--grpc_python_out={out}", f"{proto_dir}/{f}"])
        assert rc == 0, f"protoc failed on {f}"
    sys.path.insert(0, out)
    return (importlib.import_module("tandem.v1.device_pb2"),
            importlib.import_module("tandem.v1.device_pb2_grpc"))


def expect_error(code, fn, contains=""):
    try:
        r = fn()
        if hasattr(r, "__iter__") and not isinstance(r, (str, bytes)):
            list(r)
    except grpc.RpcError as e:
        assert e.code() == code, (e.code(), e.details())
        assert contains in e.details(), (contains, e.details())
        return e
    raise AssertionError(f"expected {code}")


def collect(events):
    text, fallback, summary = "", None, None
    for ev in events:
        kind = ev.WhichOneof("event")
        assert summary is None, "nothing may follow the summary"
        if kind == "delta":
            text += ev.delta.text
        elif kind == "fallback":
            fallback = ev.fallback.reason
        elif kind == "summary":
            summary = ev.summary
    assert summary is not None, "the stream ended without a summary"
    return text, fallback, summary


def wait_idle(stub, pb, seconds):
    deadline = time.time() + seconds
    while True:
        h = stub.Health(pb.HealthRequest())
        if h.local_running == 0 and h.local_waiting == 0:
            return
        assert time.time() < deadline, f"the generation was not cancelled: {h}"
        time.sleep(0.05)


def check_rpcs(args, pb, pb_grpc):
    # Over a Unix socket grpcio sends the socket path as :authority, which HTTP/2 servers
    # (hyper) refuse; name a plain authority instead.
    for target, options in ((args.target, None),
                            ("unix:" + args.socket, [("grpc.default_authority", "localhost")])):
        stub = pb_grpc.DeviceStub(grpc.insecure_channel(target, options=options))
        h = stub.Health(pb.HealthRequest())
        assert h.status == "serving" and not h.remote_configured and h.version, h
    stub = pb_grpc.DeviceStub(grpc.insecure_channel(args.target))

    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest()).models}
    dev = models["device"]
    assert dev.local and not dev.remote and dev.digest.startswith("sha256:"), dev
    assert dev.context_tokens > 0 and 0 < dev.local_token_budget <= dev.context_tokens, dev
    assert {a.name for a in dev.adapters} >= {"proofread"}, dev

    expect_error(grpc.StatusCode.UNAVAILABLE, lambda: stub.ListNodes(pb.ListNodesRequest()),
                 "no gateway is configured")

    opts = pb.GenerateOptions(model="device", max_tokens=8, temperature=0)
    text, fallback, s = collect(stub.Generate(pb.DeviceGenerateRequest(
        prompt="The king said\n", options=opts)))
    assert text and fallback is None, (text, fallback)
    assert s.route == "local" and "local budget" in s.reason and s.model == "device", s
    assert s.model_digest == dev.digest and not s.HasField("receipt"), s
    assert 0 < s.completion_tokens <= 8 and s.prompt_tokens > 0, s
    assert s.finish_reason in ("stop", "length"), s

    # Chat: the device model has no chat template, so the conversation is its messages' lines;
    # the same greedy answer as Generate on that prompt.
    ctext, _, cs = collect(stub.Chat(pb.ChatRequest(
        messages=[pb.ChatMessage(role="user", content="The king said")], options=opts)))
    assert ctext == text and cs.prompt_tokens == s.prompt_tokens, (ctext, text, cs)

    # A stop sequence ends the text before it.
    if len(text.split()) >= 2:
        stop = text.split()[1]
        stext, _, ss = collect(stub.Generate(pb.DeviceGenerateRequest(
            prompt="The king said\n", options=pb.GenerateOptions(
                max_tokens=8, stop=[stop]))))
        assert stext == text[: text.index(stop)] and ss.finish_reason == "stop", (stext, ss)

    # Errors are status codes that say what to do.
    expect_error(grpc.StatusCode.NOT_FOUND, lambda: stub.Generate(pb.DeviceGenerateRequest(
        prompt="x", options=pb.GenerateOptions(model="gpt-4o"))), "gpt-4o")
    expect_error(grpc.StatusCode.NOT_FOUND, lambda: stub.Generate(pb.DeviceGenerateRequest(
        prompt="x", options=pb.GenerateOptions(adapter="summarize"))), "summarize")
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.Generate(
        pb.DeviceGenerateRequest(prompt="")), "empty")
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.Generate(pb.DeviceGenerateRequest(
        prompt="the king said " * 400,
        options=pb.GenerateOptions(route=pb.DEVICE_ROUTE_LOCAL))), "local budget")
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.Chat(pb.ChatRequest()),
                 "messages is empty")
    expect_error(grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.Generate(pb.DeviceGenerateRequest(
        prompt="x", options=pb.GenerateOptions(stop=["a", "b", "c", "d", "e"]))), "at most 4")

    # Cancel mid-stream: the daemon stops the generation (its slot is free again) long before
    # the 200 tokens it would take at the test's token pace.
    long_opts = pb.GenerateOptions(max_tokens=200, temperature=0)
    call = stub.Generate(pb.DeviceGenerateRequest(prompt="The king said", options=long_opts))
    first = [next(call), next(call)]
    assert all(e.WhichOneof("event") == "delta" for e in first), first
    assert stub.Health(pb.HealthRequest()).local_running == 1
    call.cancel()
    wait_idle(stub, pb, 2.0)

    # Deadline exceeded: DEADLINE_EXCEEDED to the client, and the work is cancelled too.
    t0 = time.time()
    expect_error(grpc.StatusCode.DEADLINE_EXCEEDED, lambda: stub.Generate(
        pb.DeviceGenerateRequest(prompt="The king said", options=long_opts), timeout=0.5))
    assert time.time() - t0 < 3, "the deadline was not enforced"
    wait_idle(stub, pb, 2.0)

    # Still serving after all that.
    text2, _, _ = collect(stub.Generate(pb.DeviceGenerateRequest(
        prompt="The king said\n", options=opts)))
    assert text2 == text
    print("ok rpcs")


def check_auth(args, pb, pb_grpc):
    stub = pb_grpc.DeviceStub(grpc.insecure_channel(args.target))
    expect_error(grpc.StatusCode.UNAUTHENTICATED, lambda: stub.Health(pb.HealthRequest()),
                 "Bearer")
    expect_error(grpc.StatusCode.UNAUTHENTICATED, lambda: stub.Generate(
        pb.DeviceGenerateRequest(prompt="x"), metadata=[("authorization", "Bearer nope")]),
        "wrong")
    md = [("authorization", "Bearer " + args.token)]
    assert stub.Health(pb.HealthRequest(), metadata=md).status == "serving"
    _, _, s = collect(stub.Generate(pb.DeviceGenerateRequest(
        prompt="The king said", options=pb.GenerateOptions(max_tokens=4)), metadata=md))
    assert s.route == "local"
    print("ok auth")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("check")
    p.add_argument("--target", required=True)
    p.add_argument("--socket")
    p.add_argument("--proto-dir", required=True)
    p.add_argument("--token")
    args = p.parse_args()
    pb, pb_grpc = stubs(args.proto_dir)
    {"rpcs": check_rpcs, "auth": check_auth}[args.check](args, pb, pb_grpc)


if __name__ == "__main__":
    sys.exit(main())
