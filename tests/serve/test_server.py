"""The OpenAI-compatible server, driven by the official ``openai`` client over loopback HTTP."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image
from serve_helpers import make_image

from fusevlm.serve.server import ServerThread, create_app

openai = pytest.importorskip("openai")


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def user(text: str, *images: Image.Image) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in images]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    app = create_app(tiny_model_dir, max_body_bytes=1_000_000, max_images=2, max_tokens=64)
    with ServerThread(app) as url:
        yield url, app.state.engine.name


@pytest.fixture(scope="module")
def client(server):
    url, _ = server
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def ask(client, model: str, text: str, color=(200, 30, 30), **kwargs):
    return client.chat.completions.create(model=model, messages=user(text, make_image(color)), max_tokens=8, **kwargs)


def test_health_and_models(server, client):
    url, name = server
    assert httpx.get(url + "/health").json()["status"] == "ok"
    assert [m.id for m in client.models.list().data] == [name]


def test_plain_and_streaming_completions_agree(server, client):
    _, name = server
    plain = ask(client, name, "What color is the circle?")
    choice = plain.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert plain.usage.completion_tokens <= 8 and plain.usage.prompt_tokens > 16  # 16 image tokens + text

    chunks = list(ask(client, name, "What color is the circle?", stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == choice.message.content
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason


def test_concurrent_requests_equal_sequential(server, client):
    _, name = server
    jobs = [(f"Describe image {i}.", (20 * i % 256, 100, 255 - 10 * i)) for i in range(20)]
    sequential = [ask(client, name, text, color).choices[0].message.content for text, color in jobs]
    with ThreadPoolExecutor(max_workers=20) as pool:
        concurrent = list(pool.map(lambda job: ask(client, name, *job).choices[0].message.content, jobs))
    assert concurrent == sequential
    assert len(set(sequential)) > 1  # the prompts really differ, so mixing them up would show


def bomb() -> Image.Image:
    return Image.new("1", (5000, 5000))  # 25 Mpixels in a few KB of PNG


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        ({"model": None}, 400, "messages"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
        ({"messages": user("hi"), "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": user("hi"), "max_tokens": 100_000}, 400, "max_tokens"),
        ({"messages": user("hi"), "n": 3}, 400, "n=1"),
        ({"messages": user("hi"), "model": "gpt-4"}, 404, "not served"),
        ({"messages": user("hi", *[make_image()] * 3)}, 400, "at most 2 images"),
        ({"messages": user("hi", bomb())}, 413, "pixel limit"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]}, 400, "base64"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]}]}, 400, "not a readable image"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]}, 400, "remote image URLs are disabled"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}]}, 400, "local file paths are disabled"),
        ({"messages": [{"role": "user", "content": "x" * 1_100_000}]}, 413, "byte limit"),
        ({"messages": [{"role": "user", "content": "<image> " * 40}]}, 400, "cannot encode"),
    ],
)
def test_bad_requests_get_openai_errors(server, body, status, fragment):
    url, _ = server
    payload = body if isinstance(body, bytes) else None
    response = httpx.post(url + "/v1/chat/completions", content=payload, json=None if payload else body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"]


def test_unknown_route_and_client_error_type(server, client):
    url, name = server
    response = httpx.get(url + "/v1/nothing")
    assert response.status_code == 404 and "error" in response.json()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=name, messages=user("hi"), max_tokens=10_000)
