"""The sandbox's HTTP face: the Graph API paths and the ``/_sandbox`` controls (Starlette).

Handlers only move bytes in and out; ``Sandbox`` decides. Starlette 1.x has no ``on_startup``
nor ``@app.route``: routes are listed and the webhook sender starts in the lifespan.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from campaign.sandbox import meta_errors
from campaign.sandbox.config import SandboxConfig
from campaign.sandbox.emulator import ControlError, Reply, Sandbox, UploadForm

logger = logging.getLogger("campaign.sandbox")


def _respond(reply: Reply) -> Response:
    return Response(reply.encoded(), status_code=reply.status, headers=reply.headers,
                    media_type="application/json")


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        data = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise ControlError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ControlError("body must be a JSON object")
    return data


class SandboxApp(Starlette):
    """Starlette, with ``POST /{version}/{phone-number-id}/messages`` answered before the middleware
    stack and the router: it is the one hot path (1,000+ requests/s in the dispatcher benchmark),
    and routing plus request/response objects cost as much as the emulation itself."""

    sandbox: Sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path.endswith("/messages"):
                parts = path.split("/")
                if len(parts) == 4 and parts[1] and parts[2]:
                    await self._messages(parts[2], scope, receive, send)
                    return
        await super().__call__(scope, receive, send)

    async def _messages(self, phone_number_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away before sending its body
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        query_token = None
        if scope.get("query_string"):
            query_token = parse_qs(scope["query_string"].decode("latin-1")).get("access_token", [None])[0]
        sandbox = self.sandbox
        reply = sandbox.send(phone_number_id, b"".join(chunks), authorization, query_token)
        delay = sandbox.latency()
        if delay:
            await asyncio.sleep(delay)
        body = reply.encoded()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        for name, value in reply.headers.items():
            headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_app(config: SandboxConfig) -> Starlette:
    """Build the emulator app; the live ``Sandbox`` is ``app.state.sandbox``."""
    sandbox = Sandbox(config)

    async def contacts(request: Request) -> Response:
        raw = await request.body()
        reply = sandbox.check_contacts(request.path_params["phone_number_id"], raw,
                                       request.headers.get("authorization"),
                                       request.query_params.get("access_token"))
        delay = sandbox.latency()
        if delay:
            await asyncio.sleep(delay)
        return _respond(reply)

    async def message_templates(request: Request) -> Response:
        base = str(request.base_url).rstrip("/") + "/" + request.path_params["version"]
        reply = sandbox.list_templates(request.path_params["waba_id"], dict(request.query_params),
                                       request.headers.get("authorization"), base)
        delay = sandbox.latency()
        if delay:
            await asyncio.sleep(delay)
        return _respond(reply)

    async def phone_number(request: Request) -> Response:
        reply = sandbox.phone_number(request.path_params["phone_number_id"], dict(request.query_params),
                                     request.headers.get("authorization"))
        delay = sandbox.latency()
        if delay:
            await asyncio.sleep(delay)
        return _respond(reply)

    async def media(request: Request) -> Response:
        form: UploadForm | None
        try:
            async with request.form() as data:
                upload = data.get("file")
                product, mime_type = data.get("messaging_product"), data.get("type")
                form = UploadForm(
                    product if isinstance(product, str) else None,
                    mime_type if isinstance(mime_type, str) else None,
                    upload.filename if isinstance(upload, UploadFile) else None,
                    await upload.read() if isinstance(upload, UploadFile) else None)
        except (MultiPartException, ValueError):
            form = None
        reply = sandbox.upload_media(request.path_params["phone_number_id"], form,
                                     request.headers.get("authorization"), request.query_params.get("access_token"))
        return _respond(reply)

    async def unknown(request: Request) -> Response:
        error = meta_errors.unknown_path(request.url.path)
        return Response(json.dumps(error.body()), status_code=error.http_status, media_type="application/json")

    def control(handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        """A control endpoint: JSON in, JSON out, 400 with the reason on bad input."""
        async def endpoint(request: Request) -> Response:
            try:
                response = JSONResponse(await handler(request))
            except (ControlError, ValueError, TypeError, KeyError) as exc:
                response = JSONResponse({"error": str(exc)}, status_code=400)
            logger.debug("%s %s -> %d", request.method, request.url.path, response.status_code)
            return response
        return endpoint

    async def health(request: Request) -> Any:
        return {"ok": True}

    async def get_config(request: Request) -> Any:
        return sandbox.config.public_dict()

    async def patch_config(request: Request) -> Any:
        return sandbox.patch_config(await _json_body(request))

    async def reset(request: Request) -> Any:
        sandbox.reset()
        return {"ok": True}

    async def ledger(request: Request) -> Any:
        since = int(request.query_params.get("since", "0"))
        entries = sandbox.ledger.snapshot(request.query_params.get("phone_number_id"), since)
        return {"entries": [e.as_dict() for e in entries]}

    async def figures(request: Request) -> Any:
        return sandbox.ledger.figures(request.query_params.get("phone_number_id")).as_dict()

    async def inbound(request: Request) -> Any:
        return sandbox.inbound(await _json_body(request))

    async def window(request: Request) -> Any:
        return sandbox.set_window(await _json_body(request))

    async def marketing(request: Request) -> Any:
        return sandbox.marketing_preference(await _json_body(request))

    async def template_status(request: Request) -> Any:
        return sandbox.template_status(await _json_body(request))

    async def quality(request: Request) -> Any:
        return sandbox.quality(await _json_body(request))

    async def capability(request: Request) -> Any:
        return sandbox.capability(await _json_body(request))

    async def webhooks(request: Request) -> Any:
        return sandbox.webhook_stats()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sandbox.start()
        try:
            yield
        finally:
            await sandbox.stop()

    routes = [
        Route("/_sandbox/health", control(health), methods=["GET"]),
        Route("/_sandbox/config", control(get_config), methods=["GET"]),
        Route("/_sandbox/config", control(patch_config), methods=["PATCH", "POST"]),
        Route("/_sandbox/reset", control(reset), methods=["POST"]),
        Route("/_sandbox/ledger", control(ledger), methods=["GET"]),
        Route("/_sandbox/figures", control(figures), methods=["GET"]),
        Route("/_sandbox/inbound", control(inbound), methods=["POST"]),
        Route("/_sandbox/window", control(window), methods=["POST"]),
        Route("/_sandbox/marketing-preferences", control(marketing), methods=["POST"]),
        Route("/_sandbox/template-status", control(template_status), methods=["POST"]),
        Route("/_sandbox/quality", control(quality), methods=["POST"]),
        Route("/_sandbox/capability", control(capability), methods=["POST"]),
        Route("/_sandbox/webhooks", control(webhooks), methods=["GET"]),
        # POST /{version}/{phone_number_id}/messages is answered by SandboxApp before routing.
        Route("/{version}/{phone_number_id}/contacts", contacts, methods=["POST"]),
        Route("/{version}/{phone_number_id}/media", media, methods=["POST"]),
        Route("/{version}/{waba_id}/message_templates", message_templates, methods=["GET"]),
        Route("/{version}/{phone_number_id}", phone_number, methods=["GET"]),
        Route("/{path:path}", unknown, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    app = SandboxApp(routes=routes, lifespan=lifespan)
    app.sandbox = sandbox
    app.state.sandbox = sandbox
    return app
