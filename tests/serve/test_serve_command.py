"""`fusevlm serve` as users start it: a real process on a free loopback port, talked to with the openai client."""

import base64
import io
import socket
import subprocess
import sys
import time

import httpx
from openai import OpenAI
from serve_helpers import make_image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_command_answers_over_http(tiny_model_dir):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "fusevlm.cli", "serve", "--model", str(tiny_model_dir),
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise AssertionError("server did not come up: " + (process.stdout.read() if process.poll() else ""))
        buffer = io.BytesIO()
        make_image().save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        client = OpenAI(base_url=f"{base}/v1", api_key="unused")
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(model=model, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is this?"}]}])
        assert reply.choices[0].message.role == "assistant"
        assert reply.usage.completion_tokens > 0
        bad = httpx.post(f"{base}/v1/chat/completions", content=b"{not json", timeout=10)
        assert bad.status_code == 400 and "error" in bad.json()
    finally:
        process.terminate()
        process.wait(timeout=30)
