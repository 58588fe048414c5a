"""The `gguf` teacher against llama.cpp's server on the same GGUF file.

Starts one server at a time (so they never share the CPU), sends the same
GSM8K-style chat requests at each concurrency, greedy, and prints completion
tokens per second of wall time (prefill included) and per request.

    # llama.cpp's server, built from its PyPI sdist (20-30 minutes on 2 cores):
    python3 -m venv /tmp/llama && OMP_WAIT_POLICY=PASSIVE \\
        /tmp/llama/bin/pip install 'llama-cpp-python[server]==0.3.36' httpx
    cargo build --release -p stepwise-pipeline
    /tmp/llama/bin/python bench/teacher_servers.py data/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --concurrency 1 8 --requests 8 --max-tokens 96

Not a test: numbers depend on the machine. `OMP_WAIT_POLICY=PASSIVE` keeps
llama.cpp's idle threads from spinning.
"""

import argparse
import concurrent.futures as cf
import os
import socket
import subprocess
import sys
import time

import httpx

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. "
    "Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. "
    "How much more money does Betty need to buy the wallet?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
    "Mark has a garden with flowers. He planted plants of three different colors in it. Ten of them are yellow, "
    "and there are 80% more of those in purple. How many flowers does Mark have in his garden?",
    "Albert buys 2 large pizzas and 2 small pizzas. A large pizza has 16 slices and a small pizza has 8 slices. "
    "How many pieces does he eat that day if he eats it all?",
    "Ken created a care package to send to his brother. He placed a box on a scale and poured in enough jelly "
    "beans to bring the weight to 2 pounds. What is the final weight?",
    "Alexis is applying for a new job and bought a new set of business clothes. She spent $30 on shirts and "
    "$46 on pants. How much did she spend?",
]
SYSTEM = 'You are a careful teacher. Reason step by step and end with "So the answer is X."'


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_ready(url, proc, timeout=300):
    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit("server did not start")


def run_load(url, model, n, concurrency, max_tokens):
    def one(i):
        body = {
            "model": model,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        t = time.time()
        r = httpx.post(url + "/chat/completions", json=body, timeout=3600)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"], time.time() - t

    t = time.time()
    with cf.ThreadPoolExecutor(concurrency) as ex:
        results = list(ex.map(one, range(n)))
    wall = time.time() - t
    tokens = sum(r[0] for r in results)
    return tokens, wall, sum(r[1] for r in results) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--stepwise", default="target/release/stepwise")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--only", choices=["stepwise", "llama.cpp"])
    a = ap.parse_args()

    servers = {
        "stepwise": lambda port: [a.stepwise, "teacher", "serve", "--backend", "gguf", "--gguf", a.gguf,
                                  "--addr", f"127.0.0.1:{port}", "--max-batch", str(max(a.concurrency))],
        # n_ctx 2048: the prompts are short; one slot, as llama-cpp-python serves.
        "llama.cpp": lambda port: [sys.executable, "-m", "llama_cpp.server", "--model", a.gguf, "--host", "127.0.0.1",
                                   "--port", str(port), "--n_threads", str(a.threads), "--n_ctx", "2048"],
    }
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", RAYON_NUM_THREADS=str(a.threads))
    print(f"model {a.gguf}, {a.requests} requests, max_tokens {a.max_tokens}, {a.threads} threads")
    for name, cmd in servers.items():
        if a.only and a.only != name:
            continue
        port = free_port()
        proc = subprocess.Popen(cmd(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        url = f"http://127.0.0.1:{port}/v1"
        try:
            wait_ready(url, proc)
            run_load(url, "m", 1, 1, 8)  # warm-up
            for c in a.concurrency:
                tokens, wall, latency = run_load(url, "m", a.requests, c, a.max_tokens)
                print(f"{name:10} concurrency {c:3}: {tokens / wall:7.1f} completion tokens/s "
                      f"({tokens} tokens in {wall:.1f}s, mean latency {latency:.1f}s)", flush=True)
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
