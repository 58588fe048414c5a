"""PyTorch's side of `cargo bench -p stepwise-student --bench train_step`.

The same decoder (RMSNorm, half-split rotary embeddings, grouped-query
attention, SwiGLU, tied embeddings), the same batch of token ids and loss
(mean log-likelihood of every next token), AdamW; prints forward, backward and
optimizer seconds per step and training tokens/s, as the Rust bench does.

    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch   # from PyPI
    OMP_NUM_THREADS=2 /tmp/torch/bin/python bench/train_step_torch.py [hidden layers heads kv mlp vocab batch seq steps]

Not a test: numbers depend on the machine.
"""

import sys
import time

import torch
import torch.nn.functional as F

args = [int(a) for a in sys.argv[1:]]
d = [512, 6, 8, 4, 1376, 8192, 8, 128, 5]
hidden, layers, heads, kv, inter, vocab, batch, seq, steps = args + d[len(args):]
hd = hidden // heads
torch.manual_seed(0)


def p(*shape, one=False):
    t = torch.ones(*shape) if one else torch.randn(*shape) * 0.02
    return torch.nn.Parameter(t)


emb = p(vocab, hidden)
blocks = [
    dict(n1=p(hidden, one=True), q=p(heads * hd, hidden), k=p(kv * hd, hidden), v=p(kv * hd, hidden),
         o=p(hidden, heads * hd), n2=p(hidden, one=True), g=p(inter, hidden), u=p(inter, hidden), dn=p(hidden, inter))
    for _ in range(layers)
]
norm = p(hidden, one=True)
params = [emb, norm] + [t for b in blocks for t in b.values()]
inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
freqs = torch.outer(torch.arange(seq).float(), inv)
freqs = torch.cat([freqs, freqs], -1)
cos, sin = freqs.cos(), freqs.sin()


def rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x):
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def forward(ids):
    b, t = ids.shape
    x = emb[ids]
    mask = torch.full((t, t), float("-inf")).triu(1)
    for blk in blocks:
        h = rms(x, blk["n1"])
        q = (h @ blk["q"].T).view(b, t, heads, hd).transpose(1, 2)
        k = (h @ blk["k"].T).view(b, t, kv, hd).transpose(1, 2)
        v = (h @ blk["v"].T).view(b, t, kv, hd).transpose(1, 2)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(heads // kv, 1)
        v = v.repeat_interleave(heads // kv, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5 + mask, -1)
        y = (att @ v).transpose(1, 2).reshape(b, t, hidden)
        x = x + y @ blk["o"].T
        h = rms(x, blk["n2"])
        x = x + (F.silu(h @ blk["g"].T) * (h @ blk["u"].T)) @ blk["dn"].T
    return rms(x, norm) @ emb.T


ids = (torch.arange(batch * (seq + 1)) * 7919 % vocab).view(batch, seq + 1)
inp, tgt = ids[:, :seq], ids[:, 1:]
opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
n = sum(t.numel() for t in params)
print(f"pytorch {torch.__version__}: {n / 1e6:.1f}M parameters (hidden {hidden}, {layers} layers, {heads}/{kv} heads, "
      f"mlp {inter}, vocab {vocab}); batch {batch} x {seq}; threads {torch.get_num_threads()}")
tf = tb = to = 0.0
for step in range(steps + 1):
    t0 = time.perf_counter()
    logits = forward(inp)
    loss = -torch.log_softmax(logits, -1).gather(-1, tgt.unsqueeze(-1)).mean()
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
print(f"per step: forward {tf / steps:.3f}s, backward {tb / steps:.3f}s, optimizer {to / steps:.3f}s; "
      f"{batch * seq / per:.0f} tokens/s")
