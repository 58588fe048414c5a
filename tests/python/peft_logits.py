"""Judge of `peft` compatibility: an adapter directory stepwise saved loads
with `peft.PeftModel.from_pretrained` on its base (every adapter tensor
finding its module) and gives the logits stepwise computed with the adapters.

    python tests/python/peft_logits.py <base-dir> <adapter-dir> <logits.safetensors> [--tol 1e-4]

The safetensors file holds what hf_logits.py reads (`logits` being the
adapted model's) plus `base_logits`, the base's alone. Checks, in order: the
base loads in `transformers` with `base_logits`; the adapters load with every
`lora_B` non-zero (so none was left at PEFT's zero initialisation); the
adapted logits match; and they differ from the base's (the adapters act).

Prints the versions and `max abs diff X`; exits 1 with a message on a mismatch.
"""

import argparse
import os
import sys

import torch
from safetensors import safe_open

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_logits import compare, fail, inputs, load_model, logits_of, versions  # noqa: E402
from safetensors.torch import load_file  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base_dir")
    ap.add_argument("adapter_dir")
    ap.add_argument("batch", help="safetensors file with input_ids, lengths, logits, base_logits")
    ap.add_argument("--tol", type=float, default=1e-4, help="bound on max abs diff, relative to max(1, max |logit|)")
    a = ap.parse_args()
    versions()
    import peft

    batch = load_file(a.batch)
    kw, compared = inputs(batch)
    base = load_model(a.base_dir)
    compare("base: transformers vs stepwise", logits_of(base, kw), batch["base_logits"].float(), compared, a.tol)

    model = peft.PeftModel.from_pretrained(base, a.adapter_dir).eval()
    print(f"loaded {a.adapter_dir} as {type(model).__name__} ({model.peft_config['default'].peft_type}, "
          f"task {model.peft_config['default'].task_type}, r {model.peft_config['default'].r}, "
          f"alpha {model.peft_config['default'].lora_alpha})", flush=True)
    with safe_open(os.path.join(a.adapter_dir, "adapter_model.safetensors"), "pt") as f:
        saved = len(list(f.keys()))
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    if 2 * len(layers) != saved:
        fail(f"{saved} adapter tensors saved, PEFT made {len(layers)} LoRA layers (A and B each)")
    zero = [n for n, m in layers if not m.lora_B["default"].weight.abs().sum() > 0]
    if zero:
        fail(f"{len(zero)} LoRA layers kept PEFT's zero lora_B (their tensors did not load), e.g. {zero[0]}")
    print(f"{len(layers)} LoRA layers, every lora_B loaded", flush=True)

    got = logits_of(model, kw)
    compare("adapted: peft vs stepwise", got, batch["logits"].float(), compared, a.tol)
    base_logits = batch["base_logits"].float()
    moved = (got - base_logits).abs()[compared].max().item()
    scale = max(1.0, base_logits[compared].abs().max().item())
    print(f"adapters move the logits by up to {moved:.3e}", flush=True)
    if not moved > 100 * a.tol * scale:
        fail(f"the adapted logits are the base's (max abs diff {moved:.3e}): the adapters do nothing")
    print("OK", flush=True)


if __name__ == "__main__":
    main()
