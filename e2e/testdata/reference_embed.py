"""An independent reference for Shoal's embedder, in Python.

Hugging Face's `tokenizers` and Microsoft's `onnxruntime` (both from PyPI)
compute each text's sentence embedding as the sentence-transformers model
card says: tokens truncated to MAX_TOKENS (the [CLS] … [SEP] frame kept),
token states mean-pooled over the attention mask, then L2-normalised.

Usage: python3 reference_embed.py MODEL.onnx tokenizer.json MAX_TOKENS < texts.json
Writes a JSON list of {"ids": [...], "embedding": [...]} to stdout.
"""
import json
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main():
    model, tok_file, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tok = Tokenizer.from_file(tok_file)
    tok.no_padding()
    tok.enable_truncation(max_length=max_tokens)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    out = []
    for text in json.load(sys.stdin):
        enc = tok.encode(text)
        ids = np.array([enc.ids], dtype=np.int64)
        mask = np.array([enc.attention_mask], dtype=np.int64)
        feeds = {"input_ids": ids}
        if "attention_mask" in names:
            feeds["attention_mask"] = mask
        if "token_type_ids" in names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        states = session.run(None, feeds)[0][0]  # [tokens, dim]
        m = mask[0].astype(np.float64)[:, None]
        v = (states.astype(np.float64) * m).sum(axis=0) / max(m.sum(), 1.0)
        v /= np.linalg.norm(v)
        out.append({"ids": enc.ids, "embedding": v.tolist()})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
