"""Serve a model artifact with `llmforge serve`, ask it one question through the OpenAI client, stop the server.

Usage: python ask.py LLMFORGE MODEL QUESTION OUT.json [MAX_TOKENS]
Writes the request and the reply to OUT.json and prints the answer. The model is served under its directory's name;
greedy, at most MAX_TOKENS (8) tokens. recipes/smol asks with this script too.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from openai import OpenAI


def main() -> None:
    llmforge, model, question, out = sys.argv[1:5]
    max_tokens = int(sys.argv[5]) if len(sys.argv) > 5 else 8
    name = Path(model).name
    server = subprocess.Popen([llmforge, "serve", model, "--port", "0", "--served-model-name", name],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = (
            server.stdout.readline().strip()
        )  # the base URL is the server's only stdout line, once it listens
        if not url:
            sys.exit(f"error: llmforge serve {model} stopped before listening (exit {server.wait()})")
        client = OpenAI(base_url=url, api_key="unused")
        reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": question}],
                                               max_tokens=max_tokens, temperature=0.0)  # fmt: skip
        answer = reply.choices[0].message.content
        record = {"url": url, "question": question, "answer": answer, "response": reply.model_dump()}
        Path(out).write_text(json.dumps(record, indent=2) + "\n")
        print(f"{question} -> {answer}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
