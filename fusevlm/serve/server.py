"""An OpenAI-compatible HTTP API: ``POST /v1/chat/completions`` (plain and SSE streaming), ``GET /v1/models``,
``GET /health``.

The request body is read and validated here (not by FastAPI's automatic parsing) so that every bad request,
whatever is wrong with it, gets a 4xx with OpenAI's error body ``{"error": {"message", "type", "param",
"code"}}``. Generation goes through :class:`~fusevlm.serve.engine.Engine`, which runs one request at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Engine, Generation, SamplingOptions
from .images import ImagePolicy, ImageRequestError, load_image


@dataclass
class Limits:
    """What one request may ask for; the defaults suit a single-GPU server."""

    max_body_bytes: int = 20 * 1024 * 1024
    max_images: int = 4
    max_tokens: int = 1024  # upper bound of a request's max_tokens
    default_max_tokens: int = 256
    # Completion requests admitted at once (reading, decoding, queued for the model or generating); more get 429.
    # This is what bounds memory under a flood: each admitted request holds at most its body and its images.
    max_pending: int = 64
    body_timeout_s: float = 30.0  # a client must send its whole body within this (slow clients get 408)
    images: ImagePolicy = field(default_factory=ImagePolicy)


MIN_TEMPERATURE = 1e-4  # below this, a request's temperature means greedy decoding


class RequestError(Exception):
    """A refused request: becomes an OpenAI-style error body with ``status``."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code


# ---- the request schema (unknown fields are ignored, as OpenAI-compatible servers do) ----------------------------
class _Schema(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Schema):
    url: str
    detail: str | None = None


class TextPart(_Schema):
    type: Literal["text"]
    text: str


class ImagePart(_Schema):
    type: Literal["image_url"]
    image_url: ImageURL


class Message(_Schema):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart | ImagePart] | None = None


class ChatRequest(_Schema):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)  # what torch.manual_seed takes
    n: int = 1
    stream: bool = False


# ---- helpers ---------------------------------------------------------------------------------------------------
def error_response(message: str, status: int, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The body, refused with 413 past ``limit`` bytes (checked on the header and again while reading) and with
    408 when it has not all arrived within ``timeout_s`` seconds (a slow or stalled client)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body over the {limit}-byte limit", 413, code="request_too_large")

    async def receive() -> bytes:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestError(f"request body over the {limit}-byte limit", 413, code="request_too_large")
        return bytes(body)

    try:
        return await asyncio.wait_for(receive(), timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(
            f"the request body did not arrive within {timeout_s:g} s", 408, code="request_timeout"
        ) from None


def parse_request(body: bytes) -> ChatRequest:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(f"the body is not valid JSON: {err}", code="invalid_json") from err
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise RequestError(f"{param or 'body'}: {first['msg']}", param=param, code="invalid_value") from err


def sampling_options(req: ChatRequest, limits: Limits) -> SamplingOptions:
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    max_tokens = requested if requested is not None else min(limits.default_max_tokens, limits.max_tokens)
    if not 1 <= max_tokens <= limits.max_tokens:
        raise RequestError(f"max_tokens must be between 1 and {limits.max_tokens}", param="max_tokens")
    if req.n != 1:
        raise RequestError("only n=1 is supported", param="n")
    # Sampling at a temperature this close to 0 divides the logits into inf/NaN; its limit is greedy decoding.
    temperature = req.temperature if (req.temperature or 0.0) >= MIN_TEMPERATURE else 0.0
    return SamplingOptions(max_new_tokens=max_tokens, temperature=temperature, top_p=req.top_p or 1.0, seed=req.seed)


def check_text(text: str, param: str) -> str:
    """JSON escapes can carry lone surrogates (``"\\ud800"``): valid JSON, but no text a tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise RequestError(f"{param}: text is not valid Unicode ({err.reason})", param=param) from None
    return text


def to_messages(req: ChatRequest, limits: Limits) -> tuple[list[dict[str, Any]], list[Any]]:
    """OpenAI messages -> the processor's HF-style messages (image parts in place) and the decoded images."""
    messages, images = [], []
    for index, message in enumerate(req.messages):
        content = message.content or ""
        if isinstance(content, str):
            messages.append({"role": message.role, "content": check_text(content, f"messages.{index}.content")})
            continue
        parts = []
        for part in content:
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": check_text(part.text, f"messages.{index}.content")})
                continue
            if len(images) >= limits.max_images:
                raise RequestError(f"at most {limits.max_images} images per request", param="messages")
            try:
                images.append(load_image(part.image_url.url, limits.images))
            except ImageRequestError as err:
                raise RequestError(str(err), err.status, f"messages.{index}.content", err.code) from err
            parts.append({"type": "image"})
        messages.append({"role": message.role, "content": parts})
    if messages[-1]["role"] == "assistant":
        raise RequestError("the last message must be from the user or system", param="messages")
    return messages, images


def completion_body(rid: str, created: int, model: str, result: Generation) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }


def chunk(rid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None) -> str:
    body = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


async def iterate_in_thread(iterator: Iterator[Any]) -> AsyncIterator[Any]:
    """Drive a blocking iterator from the event loop without blocking it."""
    done = object()
    while (item := await asyncio.to_thread(next, iterator, done)) is not done:
        yield item


# ---- the app ---------------------------------------------------------------------------------------------------
def create_app(model_dir: str | Path | None = None, *, engine: Engine | None = None, **limits: Any) -> FastAPI:
    """The FastAPI app for a model folder (or a ready ``engine``).

    ``limits``: any :class:`Limits` field, or any :class:`~fusevlm.serve.images.ImagePolicy` field
    (``max_image_bytes``, ``max_image_pixels``, ``allow_remote_images``, ``local_image_root``).
    """
    if engine is None:
        if model_dir is None:
            raise ValueError("create_app needs model_dir or engine")
        engine = Engine.load(model_dir)
    policy_fields = set(ImagePolicy.__dataclass_fields__)
    policy = ImagePolicy(**{k: v for k, v in limits.items() if k in policy_fields})
    config = Limits(images=policy, **{k: v for k, v in limits.items() if k not in policy_fields})

    app = FastAPI(title="fusevlm", docs_url=None, redoc_url=None)
    app.state.engine, app.state.limits = engine, config
    add_schema_components(app)

    @app.exception_handler(RequestError)
    async def _refused(request: Request, err: RequestError) -> JSONResponse:
        return error_response(err.message, err.status, err.param, err.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return error_response(str(err.detail), err.status_code, code="not_found" if err.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def _crashed(request: Request, err: Exception) -> JSONResponse:
        return error_response(f"internal error: {type(err).__name__}", 500)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": engine.name}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "fusevlm"}]}

    admission = app.state.admission = Admission(config.max_pending)

    # The body is parsed by hand (see the module docstring); the schema is declared here so that the OpenAPI
    # document, and tools that test against it, know what the endpoint takes.
    @app.post("/v1/chat/completions", openapi_extra=chat_openapi())
    async def chat_completions(request: Request):
        release = admission.enter()  # before the body is read: a flood is refused before it costs memory
        try:
            req = parse_request(await read_body(request, config.max_body_bytes, config.body_timeout_s))
            if req.model not in (None, engine.name):
                raise RequestError(f"model {req.model!r} is not served here (try {engine.name!r})", 404, "model",
                                   "model_not_found")
            options = sampling_options(req, config)
            messages, images = to_messages(req, config)
            try:
                inputs = engine.encode(messages, images)  # validated here so errors come before any stream starts
            except ValueError as err:
                raise RequestError(f"cannot encode the conversation: {err}", param="messages") from err
            del images
            check_context(engine, inputs, options)
            rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
            if req.stream:
                # Admitted until the stream ends, however it ends (the response releases it).
                events = stream_events(engine, inputs, options, rid, created)
                return ReleasingStream(events, release, media_type="text/event-stream")
            result = await asyncio.to_thread(engine.generate_encoded, inputs, options)
            release()
            return JSONResponse(completion_body(rid, created, engine.name, result))
        except BaseException:
            release()
            raise

    return app


class Admission:
    """Counts admitted completion requests (all on the event loop's thread, so no lock); past ``limit``, 429.

    ``enter`` returns the request's release function; calling it more than once releases once.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.pending = 0

    def enter(self) -> Callable[[], None]:
        if self.pending >= self.limit:
            raise RequestError(
                f"the server is busy ({self.limit} requests in progress); retry shortly", 429, code="server_busy"
            )
        self.pending += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.pending -= 1

        return release


class ReleasingStream(StreamingResponse):
    """A streaming response that calls ``release`` when it is over: sent, failed or abandoned by the client."""

    def __init__(self, content: Any, release: Callable[[], None], **kwargs: Any):
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


def chat_openapi() -> dict[str, Any]:
    """The request body and error responses of ``POST /v1/chat/completions`` for the OpenAPI document."""
    schema = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    error = {"$ref": "#/components/schemas/ErrorBody"}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "responses": {
            str(status): {"description": text, "content": {"application/json": {"schema": error}}}
            for status, text in (
                (400, "a malformed or invalid request"),
                (404, "the model is not served here"),
                (408, "the body did not arrive in time"),
                (413, "the body or an image is over a limit"),
                (429, "the server is busy"),
            )
        },
    }


def add_schema_components(app: FastAPI) -> None:
    """Put the request models' sub-schemas and the error body into the app's OpenAPI components."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = original()
        components = document.setdefault("components", {}).setdefault("schemas", {})
        defs = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {})
        components.update(defs)
        components["ErrorBody"] = ERROR_BODY_SCHEMA
        path = document["paths"]["/v1/chat/completions"]["post"]
        path["requestBody"]["content"]["application/json"]["schema"].pop("$defs", None)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


ERROR_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def check_context(engine: Engine, inputs: dict[str, Any], options: SamplingOptions) -> None:
    prompt = int(inputs["input_ids"].shape[1])
    if engine.max_positions and prompt + options.max_new_tokens > engine.max_positions:
        raise RequestError(
            f"the prompt ({prompt} tokens) plus max_tokens ({options.max_new_tokens}) exceeds the model's "
            f"context of {engine.max_positions} tokens",
            param="messages",
            code="context_length_exceeded",
        )


async def stream_events(
    engine: Engine, inputs: dict[str, Any], options: SamplingOptions, rid: str, created: int
) -> AsyncIterator[str]:
    cancel = threading.Event()
    pieces = engine.stream_encoded(inputs, options, cancel=cancel)
    try:
        yield chunk(rid, created, engine.name, {"role": "assistant", "content": ""})
        async for item in iterate_in_thread(pieces):
            if isinstance(item, Generation):
                yield chunk(rid, created, engine.name, {}, item.finish_reason)
            else:
                yield chunk(rid, created, engine.name, {"content": item})
        yield "data: [DONE]\n\n"
    finally:
        cancel.set()  # a client that hung up stops its generation at the next token


# ---- running -----------------------------------------------------------------------------------------------------
def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, **limits: Any) -> None:
    """Serve until interrupted. Binds loopback by default: exposing a model is the operator's explicit choice."""
    import uvicorn

    uvicorn.run(create_app(model_dir, **limits), host=host, port=port, log_level="info")


class ServerThread:
    """Run an app on a free loopback port in a background thread (tests, notebooks)::

    with ServerThread(app) as url: ...
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1"):
        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind((host, 0))
        self.url = f"http://{host}:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()


# ---- command line ------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    limits, policy = Limits(), ImagePolicy()
    parser.add_argument("--model", required=True, type=Path, help="a fusevlm model folder")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-body-bytes", type=int, default=limits.max_body_bytes)
    parser.add_argument("--max-images", type=int, default=limits.max_images, help="images per request")
    parser.add_argument("--max-tokens", type=int, default=limits.max_tokens, help="largest max_tokens allowed")
    parser.add_argument("--max-pending", type=int, default=limits.max_pending,
                        help="completion requests in progress at once; more get 429")
    parser.add_argument("--body-timeout", type=float, default=limits.body_timeout_s,
                        help="seconds a client has to send its request body (else 408)")
    parser.add_argument("--max-image-bytes", type=int, default=policy.max_image_bytes)
    parser.add_argument("--max-image-pixels", type=int, default=policy.max_image_pixels)
    parser.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs")
    parser.add_argument("--local-image-root", type=Path, default=None, help="allow local image paths under this")


def run(args: argparse.Namespace) -> int:
    serve(
        args.model,
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        max_images=args.max_images,
        max_tokens=args.max_tokens,
        max_pending=args.max_pending,
        body_timeout_s=args.body_timeout,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        allow_remote_images=args.allow_remote_images,
        local_image_root=args.local_image_root,
    )
    return 0


if __name__ == "__main__":  # python -m fusevlm.serve.server --model DIR
    _parser = argparse.ArgumentParser(prog="fusevlm serve")
    add_arguments(_parser)
    raise SystemExit(run(_parser.parse_args()))
