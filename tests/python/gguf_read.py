#!/usr/bin/env python3
"""Open a GGUF file stepwise exported with llama.cpp's own Python package (gguf-py), with no help from stepwise.

  gguf_read.py FILE.gguf EXPECTED.json

Prints the gguf package's version, the architecture, the tensor count and the histogram of tensor types, then
checks the file against EXPECTED.json (written by tests/tests/python_gguf.rs from the Rust side):

- "metadata": {key: {"type": GGUFValueType name, "value": v}}: each key is present with that value type
  (llama.cpp's loader refuses a key of the wrong type) and value (FLOAT32 values compared after rounding the
  expected one to float32, so exactly);
- "absent": keys that must not be there;
- "tokens": the number of tokenizer.ggml.tokens (and of token_type), "merges": of tokenizer.ggml.merges;
  "token_strings": {id: string} spot checks (the end-of-text token);
- "tensors": the full tensor list in file order, each {"name", "type" (ggml's name: f32, f16, q8_0, q4_K,
  q6_K), "shape", "sample", "sum_abs"}; "by_type": the histogram.

Shapes: EXPECTED.json gives them in PyTorch/numpy order (outermost dimension first, as safetensors and
candle report them: token_embd is [vocab, hidden]). gguf-py's ReaderTensor.shape is ggml's ne order, the
reverse (row length first: [hidden, vocab]); this script checks that reversed(t.shape) equals the expected
shape, and that the dequantized numpy array has the expected shape.

"sample" holds the values at 16 evenly spread flat indices of the tensor dequantized by candle (stepwise's
reader), "sum_abs" the sum of their absolute values; the script dequantizes each tensor with
gguf.quants.dequantize and compares, which catches data read from the wrong offset or in the wrong layout.

Exits 1 with a message naming the first mismatch.
"""
import json
import sys
from importlib.metadata import version

import numpy as np


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    path, expected_path = sys.argv[1], sys.argv[2]

    import gguf
    from gguf import GGUFReader, GGUFValueType, GGMLQuantizationType
    from gguf.quants import dequantize

    want = json.load(open(expected_path))
    reader = GGUFReader(path, "r")

    def field(key):
        f = reader.get_field(key)
        if f is None:
            fail(f"metadata key {key} is missing")
        return f

    arch = field("general.architecture").contents()
    hist = {}
    for t in reader.tensors:
        name = ggml_name(GGMLQuantizationType(t.tensor_type))
        hist[name] = hist.get(name, 0) + 1
    print(f"gguf {version('gguf')} ({gguf.__file__})")
    print(f"{path}: architecture {arch}, {len(reader.tensors)} tensors, "
          + ", ".join(f"{k} {v}" for k, v in sorted(hist.items())))

    # Metadata: types and values.
    for key, spec in want["metadata"].items():
        f = field(key)
        got_type = f.types[0].name if f.types else None
        if got_type != spec["type"]:
            fail(f"{key}: value type {got_type}, expected {spec['type']}")
        got = f.contents()
        exp = spec["value"]
        if spec["type"] == "FLOAT32":
            ok = float(np.float32(got)) == float(np.float32(exp))
        else:
            ok = got == exp
        if not ok:
            fail(f"{key}: {short(got)} != expected {short(exp)}")
    for key in want.get("absent", []):
        if reader.get_field(key) is not None:
            fail(f"{key} should be absent, is {short(reader.get_field(key).contents())}")

    # Tokenizer arrays.
    tokens = field("tokenizer.ggml.tokens")
    if tokens.types != [GGUFValueType.ARRAY, GGUFValueType.STRING]:
        fail(f"tokenizer.ggml.tokens has types {tokens.types}, expected an array of strings")
    if len(tokens.data) != want["tokens"]:
        fail(f"{len(tokens.data)} tokens, expected {want['tokens']}")
    types = field("tokenizer.ggml.token_type")
    if types.types != [GGUFValueType.ARRAY, GGUFValueType.INT32] or len(types.data) != want["tokens"]:
        fail(f"tokenizer.ggml.token_type: {types.types}, {len(types.data)} entries, expected {want['tokens']} INT32")
    merges = field("tokenizer.ggml.merges")
    if merges.types != [GGUFValueType.ARRAY, GGUFValueType.STRING]:
        fail(f"tokenizer.ggml.merges has types {merges.types}")
    if len(merges.data) != want["merges"] or want["merges"] == 0:
        fail(f"{len(merges.data)} merges, expected {want['merges']} (and more than none)")
    bad = [m for m in merges.contents() if len(m.split(" ")) != 2]
    if bad:
        fail(f"merges that are not two space-separated parts: {bad[:3]}")
    for i, s in want.get("token_strings", {}).items():
        got = tokens.contents(int(i))
        if got != s:
            fail(f"token {i} is {got!r}, expected {s!r}")

    # Tensors, in file order.
    got_names = [t.name for t in reader.tensors]
    want_names = [t["name"] for t in want["tensors"]]
    if got_names != want_names:
        missing = sorted(set(want_names) - set(got_names))
        extra = sorted(set(got_names) - set(want_names))
        if missing or extra:
            fail(f"tensor list differs: missing {missing}, unexpected {extra}")
        i = next(i for i, (g, w) in enumerate(zip(got_names, want_names)) if g != w)
        fail(f"tensor order differs: #{i} is {got_names[i]}, expected {want_names[i]}")
    if hist != want["by_type"]:
        fail(f"type histogram {hist} != expected {want['by_type']}")
    for t, w in zip(reader.tensors, want["tensors"]):
        qtype = GGMLQuantizationType(t.tensor_type)
        if ggml_name(qtype) != w["type"]:
            fail(f"{t.name}: type {ggml_name(qtype)}, expected {w['type']}")
        ne = [int(x) for x in t.shape]
        if list(reversed(ne)) != w["shape"]:
            fail(f"{t.name}: ggml shape (ne) {ne}, reversed {ne[::-1]}, expected {w['shape']}")
        if t.n_elements != int(np.prod(w["shape"])):
            fail(f"{t.name}: {t.n_elements} elements, expected {int(np.prod(w['shape']))}")
        if t.data_offset % reader.alignment != 0:
            fail(f"{t.name}: data at {t.data_offset}, not aligned to {reader.alignment}")
        values = dequantize(t.data, qtype)
        if list(values.shape) != w["shape"]:
            fail(f"{t.name}: dequantized to numpy shape {list(values.shape)}, expected {w['shape']}")
        flat = values.reshape(-1).astype(np.float64)
        n = flat.size
        idx = [k * n // len(w["sample"]) for k in range(len(w["sample"]))]
        sample = flat[idx]
        exp = np.array(w["sample"], dtype=np.float64)
        scale = max(np.abs(exp).max(), 1e-30)
        diff = np.abs(sample - exp)
        if diff.max() > 1e-5 * scale:
            k = int(diff.argmax())
            fail(f"{t.name}: value at flat index {idx[k]} is {float(sample[k])!r}, stepwise's {float(exp[k])!r}")
        sum_abs = float(np.abs(flat).sum())
        if abs(sum_abs - w["sum_abs"]) > 1e-4 * max(w["sum_abs"], 1e-30):
            fail(f"{t.name}: sum |x| {sum_abs} != stepwise's {w['sum_abs']}")

    print(f"OK: {len(want['metadata'])} metadata keys, {want['tokens']} tokens, {want['merges']} merges, "
          f"{len(reader.tensors)} tensors (names, types, shapes, values) as expected")


def ggml_name(qtype):
    """ggml's type name (ggml_type_name): q4_K, not gguf-py's Q4_K."""
    name = qtype.name.lower()
    return name[:-1] + "K" if name.endswith("_k") else name


def short(v):
    s = repr(v)
    return s if len(s) < 120 else s[:117] + "..."


if __name__ == "__main__":
    main()
