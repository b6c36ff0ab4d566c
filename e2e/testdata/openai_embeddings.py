"""The official OpenAI Python client against a Shoal peer's /v1/embeddings.

Usage: python3 openai_embeddings.py BASE_URL MODEL
Prints JSON: what the client saw, for the Go test to check.
"""
import json
import sys

import openai


def main():
    base, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(api_key="unused", base_url=base + "/v1", max_retries=0)
    texts = ["how stale can a peer be?",
             "Each peer knows how stale its replicated view is.",
             "Quarterly revenue grew by ten percent."]
    r = client.embeddings.create(model=model, input=texts)  # the client asks for base64
    f = client.embeddings.create(model=model, input=texts[0], encoding_format="float")
    vecs = [d.embedding for d in r.data]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))
    out = {"model": r.model, "n": len(r.data), "dim": len(vecs[0]),
           "indexes": [d.index for d in r.data], "usage": r.usage.prompt_tokens,
           "first": vecs[0][:4], "float": f.data[0].embedding[:4],
           "sims": [dot(vecs[0], vecs[1]), dot(vecs[0], vecs[2])]}
    try:
        client.embeddings.create(model="nosuch@v1", input="x")
        out["error"] = None
    except openai.APIStatusError as e:
        # The client reads OpenAI's nested {"error": {"code"}} shape; a
        # peer answers its own {"error": "...", "code": "..."}, which the
        # client keeps whole as the exception's body.
        body = e.response.json()
        out["error"] = {"status": e.status_code, "code": body.get("code"), "message": e.message}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
