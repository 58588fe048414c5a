"""The teach stage as array tasks: N workers against one local server with a fixed latency.

Prints the array's throughput against the bound (N x concurrency requests in flight, each taking the
latency), the same examples taught by one process with N x concurrency in flight, their ratio, and the
overhead each task pays for the protocol: fetching the examples, uploading and committing its shards,
and the plan and finalize steps. Storage: a local file:// root (add --store s3://... with AWS_* set
for an object store).

    python3 bench/teach_tasks.py [--bin target/release/stepwise] [--examples 4000] [--tasks 4]
                                 [--concurrency 16] [--latency-ms 50]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stdout}{p.stderr}")
    return p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/stepwise")
    ap.add_argument("--examples", type=int, default=4000)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency-ms", type=int, default=50)
    ap.add_argument("--store", default=None)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="stepwise-bench-tasks-")
    srv = subprocess.Popen(
        [a.bin, "teacher", "serve", "--addr", "127.0.0.1:0", "--latency-ms", str(a.latency_ms),
         "--max-batch", str(a.tasks * a.concurrency)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = next(w for w in srv.stdout.readline().split() if w.startswith("http://"))
    try:
        def config(name, concurrency):
            path = os.path.join(work, name)
            with open(path, "w") as f:
                f.write(f'[data]\nexamples = {a.examples}\nood_examples = 0\n[teacher]\nkind = "http"\n'
                        f'base_url = "{url}"\nmodel = "solver"\nconcurrency = {concurrency}\n')
            return path

        # The array: plan, N workers at once (fresh scratch each), finalize.
        store = a.store or f"file://{work}/root"
        cfg = config("array.toml", a.concurrency)
        env = dict(os.environ, STEPWISE_SCRATCH=os.path.join(work, "scratch"))
        out = run([a.bin, "teach", "plan", cfg, "--dir", os.path.join(work, "plan"), "--store", store,
                   "--tasks", str(a.tasks)], env=env)
        plan_s = float(re.search(r"; ([0-9.]+) s$", out.strip()).group(1))
        t = time.perf_counter()
        procs = [subprocess.Popen([a.bin, "teach", cfg, "--store", store, "--task", str(i)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(a.tasks)]
        outs = [p.communicate() for p in procs]
        array_s = time.perf_counter() - t
        for p, (o, e) in zip(procs, outs):
            if p.returncode != 0:
                sys.exit(f"worker: exit {p.returncode}\n{o}{e}")
        phases = [tuple(map(float, re.search(
            r"fetched in ([0-9.]+) s, taught in ([0-9.]+) s, uploaded and committed in ([0-9.]+) s", o).groups()))
            for o, _ in outs]
        out = run([a.bin, "teach", "finalize", "--store", store], env=env)
        finalize_s = float(re.search(r"in ([0-9.]+) s$", out.strip()).group(1))

        # One process with the same requests in flight.
        single_cfg = config("single.toml", a.concurrency * a.tasks)
        t = time.perf_counter()
        run([a.bin, "teach", single_cfg, "--dir", os.path.join(work, "single")])
        single_s = time.perf_counter() - t
    finally:
        srv.kill()

    n = a.examples
    bound = a.tasks * a.concurrency / (a.latency_ms / 1000)
    arr, one = n / array_s, n / single_s
    print(f"{n} requests, {a.tasks} tasks x {a.concurrency} in flight, {a.latency_ms} ms latency; "
          f"bound {bound:.0f} req/s")
    print(f"array ({a.tasks} processes, wall incl. start-up): {array_s:6.2f} s  {arr:7.1f} req/s  "
          f"{100 * arr / bound:5.1f}% of the bound")
    print(f"one process, {a.tasks * a.concurrency} in flight:       {single_s:6.2f} s  {one:7.1f} req/s  "
          f"{100 * one / bound:5.1f}% of the bound")
    print(f"array / one process: {arr / one:.2f}")
    for i, (f, tch, c) in enumerate(phases):
        print(f"task {i}: examples fetched {1000 * f:6.1f} ms, taught {tch:6.2f} s, "
              f"shards uploaded and committed {1000 * c:6.1f} ms")
    mean_overhead = sum(f + c for f, _, c in phases) / len(phases)
    print(f"plan {1000 * plan_s:.1f} ms (data stage and upload included), finalize {1000 * finalize_s:.1f} ms; "
          f"per task: {1000 * mean_overhead:.1f} ms of protocol "
          f"({100 * mean_overhead / (sum(t for _, t, _ in phases) / len(phases)):.2f}% of its teach time), "
          f"plus {1000 * (plan_s + finalize_s) / a.tasks:.1f} ms of plan and finalize")


if __name__ == "__main__":
    main()
