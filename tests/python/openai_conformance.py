"""The official `openai` Python client against an OpenAI-compatible server,
called as users call it: each request shape is one check, printed as
`PASS name` or `FAIL name: why`; the exit status is 1 when any fails.

    python tests/python/openai_conformance.py BASE_URL MODEL [--question Q] [--max-tokens N]

With STEPWISE_TEST_KEY set, the server is expected to require that key: a
wrong key must raise `openai.AuthenticationError`.
"""

import argparse
import os
import sys
import time

import httpx
import openai
from openai import OpenAI

p = argparse.ArgumentParser()
p.add_argument("base_url")
p.add_argument("model")
p.add_argument("--question", default="Ann has 12 apples. Ann buys 5 more apples. "
               "How many apples does Ann have now?")
# Bounds the answers of the checks that compare two greedy answers (a real
# model's long answers cost time, not coverage).
p.add_argument("--max-tokens", type=int, default=64)
args = p.parse_args()

key = os.environ.get("STEPWISE_TEST_KEY", "not-needed")
client = OpenAI(base_url=args.base_url, api_key=key, max_retries=0, timeout=600)
M, Q, MT = args.model, args.question, args.max_tokens
results = []


def check(name):
    def run(f):
        t = time.time()
        try:
            detail = f()
            results.append((name, True, ""))
            print(f"PASS {name} ({time.time() - t:.1f} s){': ' + detail if detail else ''}", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is a row of the report
            why = f"{type(e).__name__}: {e}".replace("\n", " ")[:300]
            results.append((name, False, why))
            print(f"FAIL {name}: {why}", flush=True)
        return f
    return run


def user(text=Q):
    return [{"role": "user", "content": text}]


@check("only model and messages")
def _():
    r = client.chat.completions.create(model=M, messages=user())
    assert r.object == "chat.completion", r.object
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content, c
    assert c.finish_reason in ("stop", "length"), c.finish_reason
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0, r.usage
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage
    return repr(c.message.content[:60])


@check("content as a list of text parts")
def _():
    plain = client.chat.completions.create(model=M, messages=user(), temperature=0, max_tokens=MT)
    parts = client.chat.completions.create(
        model=M, temperature=0, max_tokens=MT,
        messages=[{"role": "user", "content": [{"type": "text", "text": Q}]}])
    a, b = plain.choices[0].message.content, parts.choices[0].message.content
    assert a == b, (a, b)


@check("system and developer roles")
def _():
    for role in ("system", "developer"):
        r = client.chat.completions.create(
            model=M, temperature=0, max_tokens=MT,
            messages=[{"role": role, "content": "Reason step by step."}] + user())
        assert r.choices[0].message.content, role


@check("max_completion_tokens")
def _():
    r = client.chat.completions.create(model=M, messages=user(), temperature=0, max_completion_tokens=4)
    c = r.choices[0]
    assert r.usage.completion_tokens <= 4, r.usage
    assert c.finish_reason == "length", c.finish_reason
    return repr(c.message.content)


@check("stop as a string, seed, top_p, n=2")
def _():
    r = client.chat.completions.create(model=M, messages=user(), temperature=0.7, top_p=0.9, seed=3,
                                       n=2, stop="\n\n", max_tokens=MT)
    assert len(r.choices) == 2 and [c.index for c in r.choices] == [0, 1], r.choices
    for c in r.choices:
        assert "\n\n" not in c.message.content, c.message.content


@check("stream=True reassembles to the non-streamed answer, with a usage chunk")
def _():
    whole = client.chat.completions.create(model=M, messages=user(), temperature=0, max_tokens=MT)
    chunks = list(client.chat.completions.create(model=M, messages=user(), temperature=0, max_tokens=MT,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(ch.object == "chat.completion.chunk" for ch in chunks), chunks[0]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    want = whole.choices[0].message.content
    assert text == want, (text, want)
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason], finish
    usage = [ch.usage for ch in chunks if ch.usage is not None]
    assert len(usage) == 1 and chunks[-1].usage is not None and not chunks[-1].choices, chunks[-1]
    assert usage[0].completion_tokens == whole.usage.completion_tokens, (usage[0], whole.usage)
    content = [ch for ch in chunks if ch.choices and ch.choices[0].delta.content]
    return f"{len(chunks)} chunks, {len(content)} with text"


@check("stream=True with n=2 and no usage asked")
def _():
    chunks = list(client.chat.completions.create(model=M, messages=user(), temperature=0, max_tokens=MT,
                                                 n=2, stream=True))
    texts = {0: "", 1: ""}
    for ch in chunks:
        assert ch.usage is None, ch
        for c in ch.choices:
            texts[c.index] += c.delta.content or ""
    whole = client.chat.completions.create(model=M, messages=user(), temperature=0, max_tokens=MT, n=2)
    want = {c.index: c.message.content for c in whole.choices}
    assert texts[0] and texts == want, (texts, want)


@check("raw HTTP: a curl-style body, no content-type, SSE ends with [DONE]")
def _():
    url = args.base_url.rstrip("/") + "/chat/completions"
    body = '{"model": "%s", "messages": [{"role": "user", "content": "%s"}], "max_tokens": %d}' % (M, "2 + 2?", MT)
    h = {"authorization": f"Bearer {key}"}
    r = httpx.post(url, content=body, headers=h, timeout=600)
    assert r.status_code == 200, (r.status_code, r.text)
    lines = []
    with httpx.stream("POST", url, headers=h, timeout=600,
                      json={"model": M, "messages": user(), "stream": True, "max_tokens": 8}) as s:
        assert s.headers["content-type"].startswith("text/event-stream"), s.headers
        lines = [x for x in s.iter_lines() if x]
    assert lines[-1] == "data: [DONE]", lines[-3:]
    assert all(x.startswith("data: ") for x in lines), lines


@check("an unknown model is openai.NotFoundError")
def _():
    try:
        client.chat.completions.create(model="no-such-model", messages=user())
    except openai.NotFoundError as e:
        assert e.body and e.body.get("code") == "model_not_found", e.body
        return e.message
    raise AssertionError("no error")


@check("a bad request is openai.BadRequestError naming the field")
def _():
    got = []
    for bad, param in [(dict(temperature=5), "temperature"), (dict(messages=[]), "messages"),
                       (dict(messages=[{"role": "user", "content": [{"type": "image_url",
                                                                      "image_url": {"url": "x"}}]}]),
                        "messages[0].content")]:
        kw = dict(model=M, messages=user())
        kw.update(bad)
        try:
            client.chat.completions.create(**kw)
        except openai.BadRequestError as e:
            assert e.body.get("param") == param and e.body.get("type") == "invalid_request_error", e.body
            got.append(param)
            continue
        raise AssertionError(f"no error for {bad}")
    return ", ".join(got)


@check("models.list and models.retrieve")
def _():
    ids = [m.id for m in client.models.list()]
    assert M in ids, ids
    assert client.models.retrieve(M).id == M
    try:
        client.models.retrieve("no-such-model")
    except openai.NotFoundError:
        return f"{ids}"
    raise AssertionError("no error for an unknown model id")


if key != "not-needed":
    @check("a wrong API key is openai.AuthenticationError")
    def _():
        bad = OpenAI(base_url=args.base_url, api_key="wrong", max_retries=0)
        try:
            bad.chat.completions.create(model=M, messages=user())
        except openai.AuthenticationError:
            return ""
        raise AssertionError("no error")

passed = sum(ok for _, ok, _ in results)
print(f"checks passed: {passed}/{len(results)}")
sys.exit(0 if passed == len(results) else 1)
