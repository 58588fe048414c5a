#!/usr/bin/env python3
"""A Python peer tool doing the teacher stage's client work against the same
server: Bespoke Labs Curator (bespokelabs-curator), the library people pick for
bulk LLM generation, sends N chat completions at concurrency C to a local
OpenAI-compatible server; each answer is written as a JSON line. Same request
shape as bench/teacher_client_httpx.py (model "solver", the arithmetic word
problem, temperature 0, max_tokens 256, n 1) and the same output keys, so the
Rust bench (teacher/benches/throughput.rs) can call it the same way.

Install the peer into its own virtual environment (tested with
bespokelabs-curator 0.1.31, litellm 1.83.7, aiohttp 3.13.5, datasets 3.6.0,
Python 3.11):

  python3 -m venv /work/peer-venv
  /work/peer-venv/bin/pip install bespokelabs-curator==0.1.31

Run (the server: `stepwise teacher serve --addr 127.0.0.1:8140 --latency-ms 200`):

  /work/peer-venv/bin/python bench/teacher_peer.py BASE_URL N [C[,C...]] [OUT.jsonl]
  e.g. .../python bench/teacher_peer.py http://127.0.0.1:8140/v1 2000 64,256

C defaults to 64,256; OUT to a temporary file (with several C, each run
rewrites it). One line per C on stdout, starting `wall_s=... cpu_s=...` like the
httpx client, then throughput, CPU seconds per 1,000 requests, and the number
of requests the server counted (GET /stats beside BASE_URL, if it has one).

How Curator is driven, and what is measured:
- backend "openai" (Curator's OpenAI-compatible online processor: aiohttp),
  base_url BASE_URL, a dummy api key; concurrency through Curator's own
  max_concurrent_requests = C, and its request and token rate limiters set so
  high (1e9 requests/min, 1e12 tokens/min) that they never hold a request back.
  Retries are Curator's default (10); any retried or failed request shows up in
  the server count and in failed=.
- Offline: telemetry (TELEMETRY_ENABLED=false, PostHog), the hosted viewer
  (CURATOR_VIEWER unset), LiteLLM's remote cost map
  (LITELLM_LOCAL_MODEL_COST_MAP=True) and the Hugging Face hub (HF_*_OFFLINE)
  are off; the tiktoken encoding Curator loads is LiteLLM's bundled copy.
  Checked with strace: the only connect() calls go to the local server.
- Cache: CURATOR_DISABLE_CACHE=1 (a random run fingerprint) and a fresh
  working directory per run, so every request goes to the server. Curator
  still writes its request, response and Arrow files there, as it always does.
- Progress display: Curator's default (rich, on stderr); --tqdm sets
  CURATOR_DISABLE_RICH_DISPLAY=1, Curator's tqdm bar, which costs this client
  more CPU (3.7-4.7 against 2.6-3.7 ms per request in our runs).
- Timed from building the curator.LLM (which sends one rate-limit probe
  request, counted as probe=1 and in server_requests) to the output file being
  written; imports and the one-off tiktoken encoding load are not timed
  (import_s goes to stderr).
- CPU: resource.getrusage(RUSAGE_SELF) (all threads of this process: asyncio
  loop, tqdm/rich refresh, pyarrow) plus RUSAGE_CHILDREN. Curator's online path
  spawns no worker processes; children_cpu_s= shows that (0 when none).
"""
import argparse
import importlib.util
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import urllib.request

Q = "Ann has {} apples. Ann buys 5 more apples. Ann gives 3 apples to a friend. How many apples does Ann have now?"


def args():
    p = argparse.ArgumentParser(usage="teacher_peer.py BASE_URL N [C[,C...]] [OUT.jsonl] [--tqdm] [--stats-url URL]")
    p.add_argument("base_url")
    p.add_argument("n", type=int)
    p.add_argument("c", nargs="?", default="64,256")
    p.add_argument("out", nargs="?")
    p.add_argument("--tqdm", action="store_true", help="Curator's tqdm progress bar instead of its rich display")
    p.add_argument("--stats-url", help="server counters (default: BASE_URL without /v1, plus /stats)")
    a = p.parse_args()
    a.cs = [int(x) for x in a.c.split(",") if x]
    if a.stats_url is None:
        root = a.base_url.rstrip("/")
        root = root[: -len("/v1")] if root.endswith("/v1") else root
        a.stats_url = root + "/stats"
    return a


def offline_env(tqdm, cache_root):
    env = {
        "TELEMETRY_ENABLED": "false",
        "CURATOR_DISABLE_CACHE": "1",
        "CURATOR_CACHE_DIR": cache_root,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_DATASETS_CACHE": os.path.join(cache_root, "hf"),
        "DO_NOT_TRACK": "1",
        "OPENAI_API_KEY": "dummy",
    }
    if tqdm:
        env["CURATOR_DISABLE_RICH_DISPLAY"] = "1"
    # Curator calls tiktoken.get_encoding("cl100k_base"), which downloads the
    # encoding unless it is cached: point tiktoken at LiteLLM's bundled copy.
    spec = importlib.util.find_spec("litellm")
    if spec and spec.submodule_search_locations and "TIKTOKEN_CACHE_DIR" not in os.environ:
        env["TIKTOKEN_CACHE_DIR"] = os.path.join(list(spec.submodule_search_locations)[0], "litellm_core_utils", "tokenizers")
    os.environ.update(env)
    for k in ("CURATOR_VIEWER", "BESPOKE_API_KEY", "OPENAI_BASE_URL"):
        os.environ.pop(k, None)
    # aiohttp runs with trust_env=True: never send loopback traffic through a proxy.
    no_proxy = ",".join(x for x in (os.environ.get("NO_PROXY"), "127.0.0.1,localhost,::1") if x)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = no_proxy


def server_requests(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(json.load(r)["requests"])
    except Exception:
        return None


def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime, s.ru_stime, c.ru_utime + c.ru_stime


def main():
    a = args()
    cache_root = tempfile.mkdtemp(prefix="curator-bench-")
    offline_env(a.tqdm, cache_root)
    ti = time.perf_counter()
    from bespokelabs import curator  # after the environment is set

    # Curator imports its backend (LiteLLM, tiktoken, aiohttp) when the first LLM
    # is built: import it here so that a one-off import is not timed.
    import bespokelabs.curator.request_processor.online.openai_online_request_processor  # noqa: F401
    import tiktoken

    tiktoken.get_encoding("cl100k_base")  # loaded once per process, cached after

    print(f"import_s={time.perf_counter() - ti:.3f} curator={getattr(curator, '__version__', '?')}", file=sys.stderr)

    class Solver(curator.LLM):
        def prompt(self, row):
            return [{"role": "user", "content": Q.format(row["i"])}]

        def parse(self, row, response):
            return {"i": row["i"], "rationale": response}

    tmp_out = None
    out = a.out
    if out is None:
        fd, tmp_out = tempfile.mkstemp(prefix="curator-bench-", suffix=".jsonl")
        os.close(fd)
        out = tmp_out
    rows = [{"i": i} for i in range(a.n)]
    try:
        for c in a.cs:
            work = tempfile.mkdtemp(prefix=f"run-c{c}-", dir=cache_root)
            s0 = server_requests(a.stats_url)
            t0, (u0, y0, k0) = time.perf_counter(), cpu()
            llm = Solver(
                model_name="solver",
                backend="openai",
                generation_params={"temperature": 0, "max_tokens": 256, "n": 1},
                backend_params={
                    "base_url": a.base_url,
                    "api_key": "dummy",
                    "max_concurrent_requests": c,
                    "max_requests_per_minute": 10**9,
                    "max_tokens_per_minute": 10**12,
                },
            )
            s_probe = server_requests(a.stats_url)
            t_setup, (u_s, y_s, _) = time.perf_counter(), cpu()
            res = llm(rows, working_dir=work)
            written = 0
            with open(out, "w") as f:
                for r in res.dataset:
                    if r.get("rationale") is not None:
                        f.write(json.dumps({"i": r["i"], "rationale": r["rationale"]}) + "\n")
                        written += 1
            t1, (u1, y1, k1) = time.perf_counter(), cpu()
            s1 = server_requests(a.stats_url)
            wall = t1 - t0
            user, sys_, kids = u1 - u0, y1 - y0, k1 - k0
            total = user + sys_ + kids
            srv = "NA" if s0 is None or s1 is None else str(s1 - s0)
            probe = "NA" if s0 is None or s_probe is None else str(s_probe - s0)
            print(
                f"wall_s={wall:.3f} cpu_s={total:.3f} peer=curator C={c} N={a.n} rows={written} failed={a.n - written}"
                f" req_per_s={a.n / wall:.1f} cpu_s_per_1000={1000 * total / a.n:.3f}"
                f" user_s={user:.3f} sys_s={sys_:.3f} children_cpu_s={kids:.3f}"
                f" setup_wall_s={t_setup - t0:.3f} setup_cpu_s={(u_s - u0) + (y_s - y0):.3f}"
                f" server_requests={srv} probe={probe}",
                flush=True,
            )
            shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
        if tmp_out:
            os.unlink(tmp_out)


if __name__ == "__main__":
    main()
