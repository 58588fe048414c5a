"""Judge of `transformers` compatibility: a student directory stepwise saved
loads with `AutoModelForCausalLM` / `AutoModelForSeq2SeqLM` (no weight
missing, unexpected or reshaped) and gives the logits stepwise computed.

    python tests/python/hf_logits.py <model-dir> <logits.safetensors> [--tol 1e-4]

The safetensors file (written by tests/tests/python_models.rs) holds
`input_ids` (b, t) and `lengths` (b,) (right padding), `logits` (b, t, vocab),
and for an encoder-decoder `decoder_input_ids` (b, t_dec), the logits being
the decoder's. Only positions inside each row's length are compared for a
decoder-only model; every decoder position for an encoder-decoder.

Prints the versions and `max abs diff X`; exits 1 with a message on a mismatch.
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file


def versions():
    import transformers

    line = f"torch {torch.__version__}, transformers {transformers.__version__}"
    try:
        import peft

        line += f", peft {peft.__version__}"
    except ImportError:
        pass
    print(line, flush=True)


def fail(msg):
    print(f"MISMATCH: {msg}", flush=True)
    sys.exit(1)


def is_seq2seq(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f).get("model_type") == "t5"


def load_model(model_dir):
    """The model in float32, eval mode; fails on any weight that did not load."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if is_seq2seq(model_dir) else AutoModelForCausalLM
    model, info = auto.from_pretrained(model_dir, dtype=torch.float32, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        fail(f"{model_dir} did not load cleanly as {type(model).__name__}: {problems}")
    print(f"loaded {model_dir} as {type(model).__name__} "
          f"({sum(p.numel() for p in model.parameters())} parameters)", flush=True)
    return model.eval()


def inputs(batch):
    """Model keyword arguments from the batch file, and a (b, t_out) mask of the compared positions."""
    ids = batch["input_ids"].long()
    lengths = batch["lengths"].long()
    t = ids.shape[1]
    attention_mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    kw = dict(input_ids=ids, attention_mask=attention_mask)
    if "decoder_input_ids" in batch:
        dec = batch["decoder_input_ids"].long()
        kw["decoder_input_ids"] = dec
        compared = torch.ones(dec.shape, dtype=torch.bool)
    else:
        compared = attention_mask.bool()
    return kw, compared


@torch.no_grad()
def logits_of(model, kw):
    return model(**kw).logits.float()


def compare(what, got, want, compared, tol):
    """Max abs difference over the compared positions; fails above tol x max(1, max |want|)."""
    if got.shape != want.shape:
        fail(f"{what}: logits of shape {tuple(got.shape)}, stepwise's are {tuple(want.shape)}")
    diff = (got - want).abs()[compared].max().item()
    scale = max(1.0, want[compared].abs().max().item())
    print(f"{what}: max abs diff {diff:.3e} (logits up to {scale:.3f}, bound {tol * scale:.1e})", flush=True)
    if not diff <= tol * scale:
        fail(f"{what}: max abs diff {diff:.3e} exceeds {tol * scale:.1e}")
    return diff


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("batch", help="safetensors file with input_ids, lengths, logits (and decoder_input_ids)")
    ap.add_argument("--tol", type=float, default=1e-4, help="bound on max abs diff, relative to max(1, max |logit|)")
    a = ap.parse_args()
    versions()
    batch = load_file(a.batch)
    model = load_model(a.model_dir)
    kw, compared = inputs(batch)
    compare("transformers vs stepwise", logits_of(model, kw), batch["logits"].float(), compared, a.tol)
    print("OK", flush=True)


if __name__ == "__main__":
    main()
