"""The official openai client's Files and Batch API calls against
`stepwise teacher serve`: files.create, batches.create, retrieve, list,
files.content, cancel, and the errors an SDK user sees."""
import json
import sys
import time

import openai
from openai import OpenAI

url = sys.argv[1]
c = OpenAI(base_url=url, api_key="not-needed", max_retries=0)
Q = "Ann has 3 apples. Ann buys 4 more apples. How many apples does Ann have now?"
lines = [
    json.dumps({
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "solver", "messages": [{"role": "user", "content": Q}], "max_tokens": 128},
    })
    for i in range(5)
]
data = ("\n".join(lines) + "\n").encode()
f = c.files.create(file=("requests.jsonl", data), purpose="batch")
assert f.object == "file" and f.purpose == "batch" and f.bytes == len(data), f
assert c.files.retrieve(f.id).filename == "requests.jsonl"
assert any(x.id == f.id for x in c.files.list(purpose="batch").data)

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def wait(b):
    deadline = time.time() + 30
    while b.status not in TERMINAL:
        assert time.time() < deadline, b
        time.sleep(0.05)
        b = c.batches.retrieve(b.id)
    return b


b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                     metadata={"job": "sdk-test"})
assert b.object == "batch" and b.status in ("validating", "in_progress"), b
assert b.metadata == {"job": "sdk-test"}, b.metadata
b = wait(b)
assert b.status == "completed", b
assert b.request_counts.total == 5 and b.request_counts.completed == 5 and b.request_counts.failed == 0, b.request_counts
assert b.completed_at is not None and b.output_file_id and b.error_file_id is None, b
out = [json.loads(x) for x in c.files.content(b.output_file_id).text.splitlines() if x]
assert sorted(x["custom_id"] for x in out) == [f"req-{i}" for i in range(5)], out
for x in out:
    assert x["response"]["status_code"] == 200, x
    body = x["response"]["body"]
    assert body["object"] == "chat.completion", body
    assert "3 + 4 = 7" in body["choices"][0]["message"]["content"], body
assert any(x.id == b.id for x in c.batches.list(limit=10).data)
print("ok: files.create, batches.create, retrieve, list, files.content")

# Cancel: the server waits before answering (--batch-delay-ms), so this one is still running.
b2 = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
c2 = c.batches.cancel(b2.id)
assert c2.status in ("cancelling", "cancelled"), c2
c2 = wait(c2)
assert c2.status == "cancelled" and c2.cancelled_at is not None, c2
print("ok: batches.cancel")

for call, exc in [
    (lambda: c.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h"),
     openai.NotFoundError),
    (lambda: c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h"),
     openai.BadRequestError),
    (lambda: c.batches.retrieve("batch-missing"), openai.NotFoundError),
]:
    try:
        call()
    except exc:
        pass
    else:
        raise AssertionError(f"expected {exc.__name__}")
bad = c.files.create(file=("bad.jsonl", b'{"custom_id": "x", "method": "GET", "url": "/v1/models", "body": {}}\n'),
                     purpose="batch")
b3 = wait(c.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h"))
assert b3.status == "failed" and b3.errors and b3.errors.data[0].line == 1, b3
print("ok: errors")
print("checks passed: batches")
