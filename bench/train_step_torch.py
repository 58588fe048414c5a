"""PyTorch's side of `cargo bench -p stepwise-student --bench train_step`.

The same decoder (RMSNorm, half-split rotary embeddings, grouped-query
attention, SwiGLU, tied embeddings), the same batch of token ids and loss
(mean log-likelihood of every next token), AdamW; prints forward, backward and
optimizer seconds per step and training tokens/s, as the Rust bench does.

    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch   # from PyPI
    OMP_NUM_THREADS=2 /tmp/torch/bin/python bench/train_step_torch.py [hidden layers heads kv mlp vocab batch seq steps]
    OMP_NUM_THREADS=2 /tmp/torch/bin/python bench/train_step_torch.py t5 [d_model layers heads d_ff vocab batch src tgt steps]
    OMP_NUM_THREADS=2 /tmp/torch/bin/python bench/train_step_torch.py smollm2-135m [batch seq steps]
    OMP_NUM_THREADS=2 .venv/bin/python bench/train_step_torch.py lora [smollm2-135m] [...]   # needs peft

The `t5` form builds t5-small's shape as `transformers` does (T5 layer norm,
relative position buckets from each stack's first block, unscaled attention,
relu feed-forward, tied head scaled by d_model^-0.5), dropout off as in the
Rust bench.

`smollm2-135m` takes SmolLM2-135M's shape (hidden 576, 30 layers, 9/3 heads,
mlp 1536, vocab 49152, tied embeddings, rope theta 1e5, RMS eps 1e-5) with
batch, seq and steps from the numbers after it. `lora` (with either decoder
form) freezes the weights and trains PEFT LoRA adapters (rank 8, alpha 16,
dropout 0) on every projection (q/k/v/o/gate/up/down), as the Rust bench's
`lora` does. Every form ends with the process's peak resident memory.

Not a test: numbers depend on the machine.
"""

import math
import resource
import sys
import time

import torch
import torch.nn.functional as F

MODES = {"t5", "lora", "smollm2-135m"}
unknown = [a for a in sys.argv[1:] if a not in MODES and not a.isdigit()]
if unknown:
    sys.exit(f"unknown argument {unknown[0]!r}: expected numbers or one of {sorted(MODES)}")
T5 = "t5" in sys.argv[1:]
LORA = "lora" in sys.argv[1:]
SMOLLM = "smollm2-135m" in sys.argv[1:]
args = [int(a) for a in sys.argv[1:] if a not in MODES]
torch.manual_seed(0)


def p(*shape, one=False):
    t = torch.ones(*shape) if one else torch.randn(*shape) * 0.02
    return torch.nn.Parameter(t)


def ids_of(b, t, vocab, mult):
    return (torch.arange(b * t) * mult % vocab).view(b, t)


def run(params, loss_fn, tokens, steps, header, n=None):
    """Times `steps` AdamW steps on `params` after one warm-up; `n`: the model's
    parameter count when not all of them are trained."""
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    n = sum(t.numel() for t in params) if n is None else n
    print(f"pytorch {torch.__version__}: {n / 1e6:.1f}M parameters ({header}); threads {torch.get_num_threads()}")
    tf = tb = to = 0.0
    for step in range(steps + 1):
        t0 = time.perf_counter()
        loss = loss_fn()
        loss.item()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if step > 0:  # the first step warms up
            tf, tb, to = tf + t1 - t0, tb + t2 - t1, to + t3 - t2
    per = (tf + tb + to) / steps
    print(f"per step: forward {tf / steps:.3f}s, backward {tb / steps:.3f}s, optimizer {to / steps:.3f}s, "
          f"total {per:.3f}s; {tokens / per:.0f} tokens/s")
    # ru_maxrss is in KiB on Linux (the Rust bench reads VmHWM, the same figure).
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def nll(logits, target):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def t5_bench():
    d = [512, 6, 8, 2048, 32128, 16, 64, 64, 5]
    d_model, layers, heads, d_ff, vocab, batch, src, tgt, steps = args + d[len(args):]
    dkv, buckets, max_dist = d_model // heads, 32, 128
    shared = p(vocab, d_model)

    def attn():
        return dict(q=p(heads * dkv, d_model), k=p(heads * dkv, d_model), v=p(heads * dkv, d_model),
                    o=p(d_model, heads * dkv))

    enc = [dict(n1=p(d_model, one=True), sa=attn(), n2=p(d_model, one=True), wi=p(d_ff, d_model), wo=p(d_model, d_ff))
           for _ in range(layers)]
    dec = [dict(n1=p(d_model, one=True), sa=attn(), n2=p(d_model, one=True), ca=attn(), n3=p(d_model, one=True),
                wi=p(d_ff, d_model), wo=p(d_model, d_ff)) for _ in range(layers)]
    enc_bias, dec_bias = p(buckets, heads), p(buckets, heads)
    enc_norm, dec_norm = p(d_model, one=True), p(d_model, one=True)

    def flat(x):
        return [t for v in x.values() for t in (flat(v) if isinstance(v, dict) else [v])]

    params = [shared, enc_bias, dec_bias, enc_norm, dec_norm] + [t for b in enc + dec for t in flat(b)]

    def bucket(rel, bidirectional):
        # transformers' T5Attention._relative_position_bucket
        n, ret = buckets, torch.zeros_like(rel)
        if bidirectional:
            n //= 2
            ret += (rel > 0).long() * n
            rel = rel.abs()
        else:
            rel = -torch.min(rel, torch.zeros_like(rel))
        exact = n // 2
        large = exact + (torch.log(rel.float() / exact) / math.log(max_dist / exact) * (n - exact)).long()
        large = torch.min(large, torch.full_like(large, n - 1))
        return ret + torch.where(rel < exact, rel, large)

    def bias(table, q, k, bidirectional):
        rel = torch.arange(k)[None, :] - torch.arange(q)[:, None]
        return table[bucket(rel, bidirectional)].permute(2, 0, 1).unsqueeze(0)

    def norm(x, w, eps=1e-6):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def mha(a, x, kv, b):
        bs, t, _ = x.shape
        tk = kv.shape[1]
        q = (x @ a["q"].T).view(bs, t, heads, dkv).transpose(1, 2)
        k = (kv @ a["k"].T).view(bs, tk, heads, dkv).transpose(1, 2)
        v = (kv @ a["v"].T).view(bs, tk, heads, dkv).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) + b, -1)
        return (att @ v).transpose(1, 2).reshape(bs, t, heads * dkv) @ a["o"].T

    def ff(blk, x, n):
        return x + torch.relu(norm(x, blk[n]) @ blk["wi"].T) @ blk["wo"].T

    enc_ids = ids_of(batch, src, vocab, 7919)
    dec_all = ids_of(batch, tgt + 1, vocab, 104729)
    dec_in, target = dec_all[:, :tgt], dec_all[:, 1:]
    causal = torch.full((tgt, tgt), float("-inf")).triu(1)

    def loss_fn():
        x = shared[enc_ids]
        eb = bias(enc_bias, src, src, True)
        for blk in enc:
            x = x + mha(blk["sa"], norm(x, blk["n1"]), norm(x, blk["n1"]), eb)
            x = ff(blk, x, "n2")
        e = norm(x, enc_norm)
        y = shared[dec_in]
        db = bias(dec_bias, tgt, tgt, False) + causal
        for blk in dec:
            h = norm(y, blk["n1"])
            y = y + mha(blk["sa"], h, h, db)
            y = y + mha(blk["ca"], norm(y, blk["n2"]), e, 0.0)
            y = ff(blk, y, "n3")
        logits = (norm(y, dec_norm) * d_model ** -0.5) @ shared.T
        return nll(logits, target)

    header = (f"t5: d_model {d_model}, {layers}+{layers} layers, {heads} heads, relu {d_ff}, vocab {vocab}; "
              f"batch {batch} x {src} -> {tgt}")
    run(params, loss_fn, batch * (src + tgt), steps, header)


if T5:
    t5_bench()
    sys.exit(0)

if SMOLLM:
    # SmolLM2-135M's shape; the numbers given are batch, seq and steps.
    d = [8, 128, 5]
    hidden, layers, heads, kv, inter, vocab, theta = 576, 30, 9, 3, 1536, 49152, 100000.0
    batch, seq, steps = args + d[len(args):]
else:
    d = [512, 6, 8, 4, 1376, 8192, 8, 128, 5]
    hidden, layers, heads, kv, inter, vocab, batch, seq, steps = args + d[len(args):]
    theta = 10000.0
hd = hidden // heads


def lin(out, inp):
    """A projection as torch.nn.Linear (so PEFT can find it), weight ~ N(0, 0.02)."""
    m = torch.nn.Linear(inp, out, bias=False)
    m.weight = p(out, inp)
    return m


class Block(torch.nn.Module):
    """One decoder layer with the projections under HF's names (PEFT's targets)."""

    def __init__(self):
        super().__init__()
        self.input_layernorm = p(hidden, one=True)
        self.q_proj, self.k_proj = lin(heads * hd, hidden), lin(kv * hd, hidden)
        self.v_proj, self.o_proj = lin(kv * hd, hidden), lin(hidden, heads * hd)
        self.post_attention_layernorm = p(hidden, one=True)
        self.gate_proj, self.up_proj, self.down_proj = lin(inter, hidden), lin(inter, hidden), lin(hidden, inter)


class Decoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = p(vocab, hidden)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(layers))
        self.norm = p(hidden, one=True)

    def forward(self, ids):
        b, t = ids.shape
        x = self.embed[ids]
        mask = torch.full((t, t), float("-inf")).triu(1)
        for blk in self.blocks:
            h = rms(x, blk.input_layernorm)
            q = blk.q_proj(h).view(b, t, heads, hd).transpose(1, 2)
            k = blk.k_proj(h).view(b, t, kv, hd).transpose(1, 2)
            v = blk.v_proj(h).view(b, t, kv, hd).transpose(1, 2)
            q, k = rope(q), rope(k)
            k = k.repeat_interleave(heads // kv, 1)
            v = v.repeat_interleave(heads // kv, 1)
            att = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5 + mask, -1)
            y = (att @ v).transpose(1, 2).reshape(b, t, hidden)
            x = x + blk.o_proj(y)
            h = rms(x, blk.post_attention_layernorm)
            x = x + blk.down_proj(F.silu(blk.gate_proj(h)) * blk.up_proj(h))
        return rms(x, self.norm) @ self.embed.T  # tied embeddings


inv = 1.0 / (theta ** (torch.arange(0, hd, 2).float() / hd))
freqs = torch.outer(torch.arange(seq).float(), inv)
freqs = torch.cat([freqs, freqs], -1)
cos, sin = freqs.cos(), freqs.sin()


def rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x):
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


model = Decoder()
n = sum(t.numel() for t in model.parameters())
lora = ""
if LORA:
    import peft

    cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = peft.get_peft_model(model, cfg)  # freezes every weight but the adapters'
    trained = [t for t in model.parameters() if t.requires_grad]
    lora = (f"; peft {peft.__version__} lora r{cfg.r} on every projection: "
            f"{sum(t.numel() for t in trained) / 1e6:.2f}M trained")
else:
    trained = list(model.parameters())

ids = ids_of(batch, seq + 1, vocab, 7919)
inp, tgt = ids[:, :seq], ids[:, 1:]
header = (f"{'smollm2-135m: ' if SMOLLM else ''}hidden {hidden}, {layers} layers, {heads}/{kv} heads, mlp {inter}, "
          f"vocab {vocab}{lora}; batch {batch} x {seq}")
run(trained, lambda: nll(model(inp), tgt), batch * seq, steps, header, n)
