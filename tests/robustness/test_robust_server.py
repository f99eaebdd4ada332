"""Abuse of the OpenAI-compatible server, run as ``fusevlm serve`` in its own process: every bad request gets a 4xx
with OpenAI's error body, slow clients neither block others nor stay forever, 200 concurrent requests get correct
answers (no 5xx) with bounded memory. (test_robust_schema.py runs schemathesis against its OpenAPI schema.)"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from robust_helpers import png_bytes, start_cli

from fusevlm.serve.server import ServerThread, create_app

MAX_IMAGE_BYTES = 100_000
RSS_GROWTH_LIMIT_MB = 400


def data_url(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def square(color=(200, 30, 30), size: int = 48) -> bytes:
    image = Image.new("RGB", (size, size), color)
    image.paste((20, 20, 220), (size // 4, size // 4, size // 2, size // 2))
    return png_bytes(image)


def user(text: str, *images: bytes) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def server(model_dir):
    port = free_port()
    process = start_cli(
        "serve", "--model", str(model_dir), "--port", str(port), "--max-images", "2", "--max-tokens", "32",
        "--max-body-bytes", "1000000", "--max-image-bytes", str(MAX_IMAGE_BYTES), "--body-timeout", "2",
        "--max-pending", "256",
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the server did not start:\n" + (process.stdout.read() if process.stdout else ""))
        time.sleep(0.2)
    yield url, process.pid, model_dir.name
    process.terminate()
    process.wait(timeout=30)


def post(url: str, body, **kwargs) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + "/v1/chat/completions", content=content, timeout=60,
                      headers={"content-type": "application/json"}, **kwargs)


BOMB = png_bytes(Image.new("1", (10000, 10000)))  # 100 Mpixels in a few KB
NOISE = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)))
IMAGE_PART = {"type": "image_url", "image_url": {"url": data_url(square())}}

ABUSE = {
    "malformed JSON": (b"{not json", 400, "not valid JSON"),
    "truncated JSON": (b'{"messages": [{"role": "user", "content": "hi"', 400, "not valid JSON"),
    "empty body": (b"", 400, "not valid JSON"),
    "JSON null": (b"null", 400, "body:"),
    "a JSON list": (b"[1, 2]", 400, "body:"),
    "body that is not UTF-8": (b'{"messages": "\xff\xfe"}', 400, "not valid JSON"),
    "missing messages": ({"model": None}, 400, "messages"),
    "empty messages": ({"messages": []}, 400, "messages"),
    "messages is a string": ({"messages": "hi"}, 400, "messages: Input should be a valid list"),
    "content is a number": ({"messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
    "unknown role": ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
    "role is a number": ({"messages": [{"role": 1, "content": "hi"}]}, 400, "role"),
    "unknown part type": ({"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]}, 400,
                          "messages.0.content"),
    "max_tokens is a string": ({"messages": user("hi"), "max_tokens": "ten"}, 400, "max_tokens"),
    "temperature is a string": ({"messages": user("hi"), "temperature": "hot"}, 400, "temperature"),
    "temperature out of range": ({"messages": user("hi"), "temperature": 5}, 400, "temperature"),
    "top_p of 0": ({"messages": user("hi"), "top_p": 0}, 400, "top_p"),
    "seed past 64 bits": ({"messages": user("hi"), "seed": 2**70}, 400, "seed"),
    "max_tokens 0": ({"messages": user("hi"), "max_tokens": 0}, 400, "max_tokens must be between 1 and 32"),
    "max_tokens negative": ({"messages": user("hi"), "max_tokens": -5}, 400, "max_tokens must be between 1 and 32"),
    "max_tokens too large": ({"messages": user("hi"), "max_tokens": 100_000}, 400, "max_tokens must be between"),
    "max_completion_tokens too large": ({"messages": user("hi"), "max_completion_tokens": 33}, 400, "max_tokens"),
    "n of 3": ({"messages": user("hi"), "n": 3}, 400, "only n=1"),
    "unknown model": ({"messages": user("hi"), "model": "gpt-4"}, 404, "is not served here"),
    "too many images": ({"messages": user("hi", square(), square(), square())}, 400, "at most 2 images"),
    "oversized image": ({"messages": user("hi", NOISE)}, 413, f"image larger than the {MAX_IMAGE_BYTES}-byte limit"),
    "decompression bomb": ({"messages": user("hi", BOMB)}, 413, "exceeds the 16777216-pixel limit"),
    "image that is not base64": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]}, 400, "base64"),
    "image bytes that are no image": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(b"hello")}}]}]}, 400, "not a readable image"),
    "truncated image": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(NOISE[:5000])}}]}]}, 400, "not a readable image"),
    "data URL without base64": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]}, 400, "data:image/png;base64"),
    "remote image URL": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/a.png"}}]}]}, 400, "remote image URLs are disabled"),
    "local file path": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}]}, 400, "local file paths are disabled"),
    "text that is not valid Unicode": (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400,
                                       "not valid Unicode"),
    "<image> placeholders in text": ({"messages": [{"role": "user", "content": "<image> " * 3}]}, 400, "cannot encode"),
    "assistant turn last": ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]},
                            400, "the last message must be from the user"),
    "prompt past the context": ({"messages": [{"role": "user", "content": "red square " * 400}]}, 400,
                                "exceeds the model's context of 512 tokens"),
    "body over the size limit": ({"messages": [{"role": "user", "content": "x" * 1_100_000}]}, 413, "byte limit"),
}


@pytest.mark.parametrize("name", list(ABUSE))
def test_abusive_request_gets_a_4xx_with_an_openai_error_body(name, server):
    url, _, _ = server
    body, status, fragment = ABUSE[name]
    response = post(url, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert fragment in error["message"], error["message"]


def test_unknown_route_and_method_are_4xx(server):
    url, _, _ = server
    assert httpx.get(url + "/v1/nothing").status_code == 404
    assert httpx.get(url + "/v1/chat/completions").status_code == 405


def answer(url: str, model: str, text: str, color=(200, 30, 30), **extra) -> httpx.Response:
    return post(url, {"model": model, "messages": user(text, square(color)), "max_tokens": 8, **extra})


def test_good_requests_still_get_answers(server):
    url, _, model = server
    plain = answer(url, model, "What color?")
    assert plain.status_code == 200, plain.text
    text = plain.json()["choices"][0]["message"]["content"]
    stream = answer(url, model, "What color?", stream=True)
    events = [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == text
    assert stream.text.rstrip().endswith("data: [DONE]")
    system_only = post(url, {"messages": [{"role": "system", "content": "Be brief."}], "max_tokens": 2})
    assert system_only.status_code == 200


# ---- slow clients ---------------------------------------------------------------------------------------------------
def read_response(sock: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < content_length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode()


def content_length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_a_stalled_body_gets_408_without_blocking_anyone(server):
    url, _, model = server
    port = int(url.rsplit(":", 1)[1])
    stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
    stalled.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 500\r\n\r\n{\"messages\": [")
    slow_headers = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    for sock in slow_headers:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    started = time.monotonic()
    assert answer(url, model, "still there?").status_code == 200  # served while they hang
    assert time.monotonic() - started < 2.0
    reply = read_response(stalled)  # the server gives up on the stalled body after --body-timeout 2
    assert reply.startswith("HTTP/1.1 408") and "did not arrive within 2 s" in reply, reply
    assert time.monotonic() - started < 10
    for sock in [stalled, *slow_headers]:
        sock.close()


def test_a_client_that_stops_reading_its_stream_does_not_hold_the_server(server):
    url, _, model = server
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=30, json={
        "model": model, "messages": user("Tell me", square()), "max_tokens": 32, "stream": True,
    }) as response:
        assert response.status_code == 200
        next(response.iter_lines())  # read one event, then hang up
    started = time.monotonic()
    assert answer(url, model, "next one").status_code == 200
    assert time.monotonic() - started < 10


# ---- a flood ----------------------------------------------------------------------------------------------------------
async def flood(url: str, bodies: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=300) as client:
        return await asyncio.gather(*(client.post(url + "/v1/chat/completions", json=b) for b in bodies))


def test_200_concurrent_requests_all_answered_correctly_with_bounded_memory(server, capsys):
    url, pid, model = server
    jobs = [(f"Describe image {i}.", (20 * i % 256, 100, 255 - 10 * i)) for i in range(20)]
    bodies = [{"model": model, "messages": user(text, square(color)), "max_tokens": 8} for text, color in jobs]
    expected = [answer(url, model, text, color).json()["choices"][0]["message"]["content"] for text, color in jobs]
    assert len(set(expected)) > 1  # prompts really differ, so mixed-up answers would show

    before = rss_mb(pid)
    peak, stop = [before], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak.append(rss_mb(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    responses = asyncio.run(flood(url, [bodies[i % 20] for i in range(200)]))
    elapsed = time.monotonic() - started
    stop.set()
    sampler.join()
    after = rss_mb(pid)

    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 200, sorted(set(statuses))
    answers = [r.json()["choices"][0]["message"]["content"] for r in responses]
    assert answers == [expected[i % 20] for i in range(200)]
    growth = max(peak) - before
    with capsys.disabled():
        print(f"\n200 concurrent requests in {elapsed:.1f} s: server RSS {before:.0f} MB before, peak +{growth:.0f} MB, "
              f"{after - before:+.0f} MB after")
    assert growth < RSS_GROWTH_LIMIT_MB


def test_a_flood_past_max_pending_gets_429_not_5xx(model_dir):
    app = create_app(model_dir, max_pending=4, max_tokens=8)
    with ServerThread(app) as url:
        bodies = [{"messages": user(f"Image {i}?", square()), "max_tokens": 8} for i in range(40)]
        responses = asyncio.run(flood(url, bodies))
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses
        busy = next(r for r in responses if r.status_code == 429).json()["error"]
        assert busy["code"] == "server_busy" and "retry shortly" in busy["message"]
        assert app.state.admission.pending == 0  # every admitted request was released
        assert httpx.post(url + "/v1/chat/completions", json=bodies[0], timeout=60).status_code == 200
