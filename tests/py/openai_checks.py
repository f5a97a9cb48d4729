"""The official OpenAI Python SDK against `tandem serve` (driven by tests/daemon_openai.rs).

    python openai_checks.py CHECK --url http://127.0.0.1:PORT --socket PATH [--token T]

CHECK is one of: local, unix, auth, remote, busy. Each asserts and prints `ok CHECK`.
"""

import argparse
import sys
import time

import openai

try:  # the openai package's HTTP client (httpx2 in openai 3, httpx before)
    import httpx2 as httpx
except ImportError:
    import httpx
from openai import OpenAI

MODEL = "device"


def client(args, token=None, **kw):
    return OpenAI(base_url=args.url + "/v1", api_key=token or args.token or "unused",
                  max_retries=0, timeout=60, **kw)


def unix_client(args):
    transport = httpx.HTTPTransport(uds=args.socket)
    return OpenAI(base_url="http://localhost/v1", api_key=args.token or "unused", max_retries=0,
                  http_client=httpx.Client(transport=transport, timeout=60))


def tandem(obj):
    t = (obj.model_extra or {}).get("tandem")
    assert t is not None, f"no tandem object in {obj}"
    return t


def chat_both(c, route=None, **kw):
    """One greedy chat completion, non-streamed and streamed: both must agree."""
    headers = {"x-tandem-route": route} if route else None
    msgs = [{"role": "user", "content": "The king said"}]
    raw = c.chat.completions.with_raw_response.create(
        model=kw.pop("model", MODEL), messages=msgs, max_tokens=12, temperature=0,
        extra_headers=headers, **kw)
    r = raw.parse()
    t = tandem(r)
    assert raw.headers["x-tandem-route"] == t["route"], (raw.headers, t)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content, r
    assert choice.finish_reason in ("stop", "length"), choice
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    text, last = "", None
    stream = c.chat.completions.create(model=r.model, messages=msgs, max_tokens=12,
                                       temperature=0, stream=True, extra_headers=headers)
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        for ch in chunk.choices:
            text += ch.delta.content or ""
        last = chunk
    assert text == choice.message.content, (text, choice.message.content)
    lt = tandem(last)
    assert last.choices[0].finish_reason == choice.finish_reason
    assert last.usage.completion_tokens == r.usage.completion_tokens
    assert lt["route"] == t["route"], (lt, t)
    return r, t, lt


def completion_both(c, route=None):
    headers = {"x-tandem-route": route} if route else None
    r = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10,
                             temperature=0, extra_headers=headers)
    assert r.object == "text_completion"
    text = r.choices[0].text
    assert text and r.choices[0].finish_reason in ("stop", "length"), r
    streamed, last = "", None
    for chunk in c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10,
                                      temperature=0, stream=True, extra_headers=headers):
        streamed += "".join(ch.text for ch in chunk.choices)
        last = chunk
    assert streamed == text, (streamed, text)
    assert tandem(last)["route"] == tandem(r)["route"]
    return r, text


def check_local(args):
    c = client(args)
    ids = [m.id for m in c.models.list().data]
    assert "device" in ids, ids
    assert c.models.retrieve("device").id == "device"
    r, t, _ = chat_both(c)
    assert t["route"] == "local" and t["receipt"] is None, t
    assert "fit the local budget" in t["reason"], t
    r, t, _ = chat_both(c, route="local")
    assert t["route"] == "local", t
    r, text = completion_both(c)
    assert tandem(r)["route"] == "local"

    # max_completion_tokens is the newer name of max_tokens.
    r2 = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                   max_completion_tokens=3, temperature=0)
    assert r2.usage.completion_tokens <= 3, r2.usage

    # A stop sequence cuts the text before it, streamed or not.
    words = text.split()
    if len(words) >= 3:
        stop = " " + words[2]
        want = text[: text.index(stop)]
        s = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10,
                                 temperature=0, stop=[stop])
        assert s.choices[0].text == want and s.choices[0].finish_reason == "stop", (s, want)
        got = "".join(ch.text for chunk in c.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0,
            stop=stop, stream=True) for ch in chunk.choices)
        assert got == want, (got, want)

    # Unknown model: 404 model_not_found.
    try:
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        assert e.code == "model_not_found" and "gpt-4o" in e.message, e

    # Unsupported fields are refused with a 400 naming the field.
    for kw in ({"logprobs": True}, {"tools": [{"type": "function", "function": {"name": "f"}}]},
               {"presence_penalty": 0.5}, {"n": 2}):
        try:
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                      **kw)
            raise AssertionError(f"{kw} accepted")
        except openai.BadRequestError as e:
            field = next(iter(kw))
            assert e.param == field and field in e.message, (kw, e.param, e.message)
    try:
        c.completions.create(model=MODEL, prompt="x", extra_body={"echo": True})
        raise AssertionError("echo accepted")
    except openai.BadRequestError as e:
        assert e.param == "echo" and e.code == "unsupported_parameter", e

    # A prompt too long for the device (and no gateway): 400 context_length_exceeded.
    long = "the king said " * 400
    for route in (None, "local"):
        try:
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long}],
                                      max_tokens=8, extra_headers={"x-tandem-route": route} if route else None)
            raise AssertionError("too-long prompt accepted")
        except openai.BadRequestError as e:
            assert e.code == "context_length_exceeded" and "local budget" in e.message, e

    # A bad route header.
    try:
        c.completions.create(model=MODEL, prompt="x", extra_headers={"x-tandem-route": "cloud"})
        raise AssertionError("bad route accepted")
    except openai.BadRequestError as e:
        assert e.param == "x-tandem-route", e
    # The server model without a gateway: a clear 400, not a hang.
    try:
        c.completions.create(model="server", prompt="x", max_tokens=4)
        raise AssertionError("server model without a gateway accepted")
    except (openai.BadRequestError, openai.NotFoundError) as e:
        assert "gateway" in e.message or "not configured" in e.message, e
    print("ok local")


def check_unix(args):
    c = unix_client(args)
    assert "device" in [m.id for m in c.models.list().data]
    _, t, _ = chat_both(c)
    assert t["route"] == "local"
    print("ok unix")


def check_auth(args):
    bad = client(args, token="not-the-token")
    for call in (lambda: bad.models.list(),
                 lambda: bad.chat.completions.create(
                     model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2)):
        try:
            call()
            raise AssertionError("wrong token accepted")
        except openai.AuthenticationError as e:
            assert e.status_code == 401 and "token" in e.message, e
    none = httpx.post(args.url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert none.status_code == 401, none
    assert none.json()["error"]["type"] == "authentication_error", none.text
    _, t, _ = chat_both(client(args))
    assert t["route"] == "local"
    print("ok auth")


def check_remote(args):
    c = client(args)
    r, t, lt = chat_both(c, route="remote")
    assert t["route"] == "remote", t
    rc = t["receipt"]
    assert rc and rc["release_digest"].startswith("sha256:") and rc["node"], t
    assert lt["receipt"] and lt["receipt"]["release_digest"] == rc["release_digest"], lt
    assert rc["completion_tokens"] == r.usage.completion_tokens, (rc, r.usage)
    # The same greedy request runs locally to the same text (same model files both sides).
    local, lt2, _ = chat_both(c, route="local")
    assert local.choices[0].message.content == r.choices[0].message.content
    assert lt2["route"] == "local"
    r, _ = completion_both(c, route="remote")
    assert tandem(r)["route"] == "remote" and tandem(r)["receipt"]
    # Over the local budget (the test set it to 64 tokens): auto sends it to a node.
    long = "the king said " * 30
    r = c.completions.create(model=MODEL, prompt=long, max_tokens=4, temperature=0)
    assert tandem(r)["route"] == "remote", tandem(r)
    assert "exceed the local budget" in tandem(r)["reason"], tandem(r)
    # The server model runs only remotely.
    r = c.completions.create(model="server", prompt="The king said", max_tokens=4, temperature=0)
    assert tandem(r)["route"] == "remote" and tandem(r)["receipt"], tandem(r)
    print("ok remote")


def check_busy(args):
    """The daemon runs with --max-local 1 --queue 0 and slow tokens: while one streamed
    generation holds the slot, another local request is refused with 429 "busy"; once the
    first is closed (cancelled), the slot is free again."""
    c = client(args)
    stream = c.completions.create(model=MODEL, prompt="The king said", max_tokens=200,
                                  temperature=0, stream=True)
    it = iter(stream)
    next(it)
    try:
        c.completions.create(model=MODEL, prompt="x", max_tokens=2)
        raise AssertionError("a second local generation was admitted")
    except openai.RateLimitError as e:
        assert e.status_code == 429 and "busy" in e.message and e.code == "busy", e
    stream.close()  # the client goes away: the daemon cancels its generation
    deadline = time.time() + 10
    while True:
        try:
            r = c.completions.create(model=MODEL, prompt="x", max_tokens=2, temperature=0)
            break
        except openai.RateLimitError:
            assert time.time() < deadline, "the cancelled generation kept its slot"
            time.sleep(0.1)
    assert tandem(r)["route"] == "local"
    print("ok busy")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("check")
    p.add_argument("--url", required=True)
    p.add_argument("--socket")
    p.add_argument("--token")
    args = p.parse_args()
    {"local": check_local, "unix": check_unix, "auth": check_auth, "remote": check_remote,
     "busy": check_busy}[args.check](args)


if __name__ == "__main__":
    sys.exit(main())
