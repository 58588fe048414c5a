#!/usr/bin/env python3
"""Python asyncio + httpx doing the teacher stage's client work against the same
server: N chat completions at concurrency C, each response parsed and its answer
written as a JSON line. Prints wall seconds and this process's CPU seconds.

  teacher_client_httpx.py BASE_URL N C OUT.jsonl
"""
import asyncio
import json
import resource
import sys
import time

import httpx


async def main():
    base, n, c, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    q = "Ann has {} apples. Ann buys 5 more apples. Ann gives 3 apples to a friend. How many apples does Ann have now?"
    sem = asyncio.Semaphore(c)
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    t0 = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    with open(out, "w") as f:
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            async def one(i):
                async with sem:
                    body = {"model": "solver", "messages": [{"role": "user", "content": q.format(i)}],
                            "temperature": 0, "max_tokens": 256, "n": 1}
                    r = await client.post(base + "/chat/completions", json=body)
                    r.raise_for_status()
                    text = r.json()["choices"][0]["message"]["content"]
                    f.write(json.dumps({"i": i, "rationale": text}) + "\n")
            await asyncio.gather(*(one(i) for i in range(n)))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(f"wall_s={time.perf_counter() - t0:.3f} cpu_s={cpu:.3f}")


asyncio.run(main())
