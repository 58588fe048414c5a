"""A student exported with `stepwise export --format gguf` served by llama.cpp answers as stepwise does.

For each GGUF type asked for, exports the model (`stepwise export MODEL --format gguf --type T`), starts
llama.cpp's OpenAI-compatible server on the export (llama-cpp-python's `python -m llama_cpp.server`, from the
venv `--llama-python` names), asks `/v1/completions` greedily (temperature 0, repeat penalty 1: the server's
default is 1.1) with the exact text `stepwise generate` gives the student (`[label] {input}\\nAnswer:` for the
label task, `[rationale] {input}\\nRationale:` for the rationale task; student/src/data.rs `prompt`), and
compares the answers with `stepwise generate --model EXPORT` and with `stepwise generate --model MODEL`.
When MODEL is itself a .gguf, llama.cpp serves it too (type "source"), which tells a difference the export
makes from one between the two engines on the same file.

    # llama.cpp's server, built from its PyPI sdist (20-30 minutes on 2 cores); the script installs the
    # [server] extras into that venv when they are missing:
    python3 -m venv /tmp/llvenv && OMP_WAIT_POLICY=PASSIVE /tmp/llvenv/bin/pip install llama-cpp-python==0.3.36
    cargo build --release -p stepwise-pipeline
    python3 bench/export_llamacpp.py --model data/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --types f16,q8_0 --llama-python /tmp/llvenv/bin/python

MODEL is anything `stepwise generate` and `stepwise export` load: a run's `students/<name>/final`, an HF
directory, a PEFT adapter directory (merged on export) or a .gguf. Prints a table (type, prompt, stepwise's
answer from the export, llama.cpp's, equal?) and a summary count; exits 0 either way (a benchmark, not a
test: greedy answers of two engines can part where two logits nearly tie). Standard library only.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request

# SmolLM2-135M-Instruct answers the first five with the label prompt; to the last three it gives the end
# token at once (an empty answer), which still has to match.
PROMPTS = [
    "Who wrote Romeo and Juliet?",
    "How many legs does a spider have?",
    "Translate 'good morning' into French.",
    "Ann has 3 apples. She buys 4 more. How many apples does Ann have now?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Is a whale a fish?",
    "What is the capital of France?",
    "Can a penguin fly?",
]

# The server's imports; installed from PyPI, as llama-cpp-python's [server] extra pins them, when missing.
SERVER_IMPORTS = "import llama_cpp.server, uvicorn, fastapi, sse_starlette, starlette_context, pydantic_settings, yaml"
SERVER_EXTRAS = ["uvicorn>=0.22.0", "fastapi>=0.100.0", "pydantic-settings>=2.0.1", "sse-starlette>=1.6.1",
                 "starlette-context>=0.3.6,<0.4", "PyYAML>=5.1"]


def prompt(task, text):
    """student/src/data.rs `prompt(task, input)`."""
    return f"[label] {text}\nAnswer:" if task == "label" else f"[rationale] {text}\nRationale:"


def run(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return p.stdout


def stepwise_generate(a, model, env):
    """`stepwise generate` prints `> {input}\\n{answer}\\n\\n` per input, in order."""
    cmd = [a.stepwise, "generate", "--model", model, "--task", a.task, "--max-tokens", str(a.max_tokens)]
    for p in a.prompts:
        cmd += ["--input", p]
    t = time.time()
    out = run(cmd, env)
    secs = time.time() - t
    answers, pos = [], 0
    for k, p in enumerate(a.prompts):
        marker = f"> {p}\n"
        start = out.index(marker, pos) + len(marker)
        end = out.index(f"\n\n> {a.prompts[k + 1]}\n", start) if k + 1 < len(a.prompts) else len(out)
        answers.append(out[start:end].strip())
        pos = end
    return answers, secs


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post(url, body, timeout=600):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def wait_ready(url, proc, log, timeout=300):
    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            sys.exit(f"llama.cpp's server exited with {proc.returncode}:\n{open(log).read()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    sys.exit("llama.cpp's server did not start")


def llama_cpp_answers(a, gguf, env, workdir):
    """Greedy completions of the student's prompts from llama.cpp's server on `gguf`."""
    port = free_port()
    log = os.path.join(workdir, f"server-{port}.log")
    cmd = [a.llama_python, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
           "--n_threads", str(a.threads), "--n_ctx", "2048"]
    with open(log, "w") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready(url, proc, log)
        answers = []
        t = time.time()
        for p in a.prompts:
            r = post(url + "/completions", {
                "prompt": prompt(a.task, p),
                "max_tokens": a.max_tokens,
                "temperature": 0,
                "repeat_penalty": 1.0,
                "frequency_penalty": 0.0,
                "presence_penalty": 0.0,
            })
            answers.append(r["choices"][0]["text"].strip())
        return answers, time.time() - t
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ensure_server(py):
    if not os.path.exists(py):
        sys.exit(f"{py} does not exist: give --llama-python the Python of a venv with llama-cpp-python")
    if subprocess.run([py, "-c", SERVER_IMPORTS], capture_output=True).returncode == 0:
        return
    print(f"installing llama-cpp-python's [server] extras into {py}: {' '.join(SERVER_EXTRAS)}", flush=True)
    run([py, "-m", "pip", "install", "--quiet", *SERVER_EXTRAS])
    p = subprocess.run([py, "-c", SERVER_IMPORTS], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"llama_cpp.server still does not import:\n{p.stderr}")


def clip(s, n):
    s = s.replace("\n", "⏎")
    return s if len(s) <= n else s[: n - 1] + "…"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stepwise", default="target/release/stepwise", help="the stepwise binary")
    ap.add_argument("--model", default="data/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                    help="a student: HF directory, adapter directory or .gguf")
    ap.add_argument("--types", default="f16,q8_0", help="comma-separated: f16, q8_0, q4_k_m")
    ap.add_argument("--prompt", action="append", dest="prompts", help="an input (repeatable; default: six built in)")
    ap.add_argument("--task", choices=["label", "rationale"], default="label")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--llama-python", default="/tmp/llvenv/bin/python",
                    help="the Python of a venv with llama-cpp-python")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--keep", help="a directory to keep the exports and server logs in (default: a temporary one)")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    a.prompts = a.prompts or PROMPTS
    types = [t.strip() for t in a.types.split(",") if t.strip()]

    if not os.path.exists(a.stepwise):
        sys.exit(f"{a.stepwise} does not exist: cargo build --release -p stepwise-pipeline")
    if not os.path.exists(a.model):
        sys.exit(f"{a.model} does not exist (scripts/setup-data.sh fetches the registry models)")
    ensure_server(a.llama_python)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", RAYON_NUM_THREADS=str(a.threads))
    workdir = a.keep or tempfile.mkdtemp(prefix="export-llamacpp-")
    os.makedirs(workdir, exist_ok=True)

    print(f"model {a.model}; {a.task} prompts; greedy, max_tokens {a.max_tokens}; {a.threads} threads")
    original, secs = stepwise_generate(a, a.model, env)
    print(f"stepwise on the original: {secs:.1f}s", flush=True)

    rows = []
    try:
        runs = [("source", a.model)] if a.model.endswith(".gguf") else []
        for ty in types:
            out = os.path.join(workdir, f"student-{ty}.gguf")
            t = time.time()
            run([a.stepwise, "export", a.model, "--format", "gguf", "--type", ty, "--out", out], env)
            print(f"exported {ty}: {os.path.getsize(out) / 2**20:.1f} MiB in {time.time() - t:.1f}s", flush=True)
            runs.append((ty, out))
        for ty, gguf in runs:
            mine, s_secs = (original, 0.0) if ty == "source" else stepwise_generate(a, gguf, env)
            theirs, l_secs = llama_cpp_answers(a, gguf, env, workdir)
            print(f"{ty}: stepwise {s_secs:.1f}s, llama.cpp {l_secs:.1f}s", flush=True)
            for p, o, m, l in zip(a.prompts, original, mine, theirs):
                rows.append({"type": ty, "prompt": p, "original": o, "stepwise": m, "llama_cpp": l,
                             "equal": m == l, "export_equals_original": m == o})
    finally:
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    w = 34
    print()
    print(f"{'type':7} {'prompt':28} {'stepwise (export)':{w}} {'llama.cpp (export)':{w}} equal  =original")
    for r in rows:
        print(f"{r['type']:7} {clip(r['prompt'], 28):28} {clip(r['stepwise'], w):{w}} {clip(r['llama_cpp'], w):{w}} "
              f"{'yes' if r['equal'] else 'NO':6} {'yes' if r['export_equals_original'] else 'no'}")
    print()
    for ty, _ in runs:
        rs = [r for r in rows if r["type"] == ty]
        nonempty = sum(r["equal"] and r["stepwise"] != "" for r in rs)
        print(f"{ty:7}: llama.cpp == stepwise on {sum(r['equal'] for r in rs)}/{len(rs)} prompts "
              f"({nonempty} of them non-empty); "
              f"stepwise on the export == on the original on {sum(r['export_equals_original'] for r in rs)}/{len(rs)}")
    eq = sum(r["equal"] for r in rows)
    print(f"total  : {eq}/{len(rows)} answers equal")
    for r in rows:
        if not r["equal"]:
            same = len(os.path.commonprefix([r["stepwise"], r["llama_cpp"]]))
            print(f"\n{r['type']} {r['prompt']!r} (the same for the first {same} characters):\n" + textwrap.indent(
                f"stepwise:  {r['stepwise']!r}\nllama.cpp: {r['llama_cpp']!r}", "  "))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
