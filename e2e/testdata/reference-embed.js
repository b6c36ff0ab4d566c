// An independent reference for Shoal's embedder: Hugging Face's JavaScript
// tokenizer and onnxruntime-node's own binding compute the mean-pooled,
// L2-normalised embedding of each text.
// Usage: node reference-embed.js MODEL.onnx tokenizer.json '["text", ...]'
const fs = require("fs");
const ort = require("onnxruntime-node");
const { Tokenizer } = require("@huggingface/tokenizers");

(async () => {
  const [model, tokFile, textsJSON] = process.argv.slice(2);
  const tok = new Tokenizer(JSON.parse(fs.readFileSync(tokFile, "utf8")), {});
  const session = await ort.InferenceSession.create(model);
  const out = [];
  for (const text of JSON.parse(textsJSON)) {
    const enc = tok.encode(text);
    let ids = enc.ids, mask = enc.attention_mask;
    // Keep the tokens the mask marks (tokenizer files may pad).
    let n = 0;
    mask.forEach((m, i) => { if (m) n = i + 1; });
    ids = ids.slice(0, n); mask = mask.slice(0, n);
    const shape = [1, ids.length];
    const feeds = {};
    const names = session.inputNames;
    if (names.includes("input_ids")) feeds.input_ids = new ort.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), shape);
    if (names.includes("attention_mask")) feeds.attention_mask = new ort.Tensor("int64", BigInt64Array.from(mask.map(BigInt)), shape);
    if (names.includes("token_type_ids")) feeds.token_type_ids = new ort.Tensor("int64", new BigInt64Array(ids.length), shape);
    const res = await session.run(feeds);
    const states = res[session.outputNames[0]];
    const dim = states.dims[2];
    const v = new Float64Array(dim);
    let count = 0;
    for (let t = 0; t < ids.length; t++) {
      if (!mask[t]) continue;
      count++;
      for (let d = 0; d < dim; d++) v[d] += states.data[t * dim + d];
    }
    let norm = 0;
    for (let d = 0; d < dim; d++) { v[d] /= count; norm += v[d] * v[d]; }
    norm = Math.sqrt(norm);
    out.push({ ids: Array.from(ids), embedding: Array.from(v, x => x / norm) });
  }
  console.log(JSON.stringify(out));
})().catch(e => { console.error(e); process.exit(1); });
