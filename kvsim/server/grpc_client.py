"""A thin gRPC client for kvsim's (or KVCM's) MetaService and AdminService.

Two ways to call:

- typed: ``client.call("meta", "GetCacheLocation", GetCacheLocationRequest(...))``
  returns the response message;
- JSON-shaped: ``client.meta("getCacheLocation", {...})`` takes the same dict body as the
  HTTP API (snake_case; int64 as numbers or strings; enums as names or integers; unknown
  fields ignored) and returns the reply as a dict shaped like the HTTP reply (snake_case,
  enum names, int64 as ints; on success every scalar and repeated field present, default
  or not; on an error just the header).

The credential ``"user:password"`` is sent on every call as gRPC metadata
``authorization: Basic base64(user:password)``.

Example:
    >>> with GrpcClient("127.0.0.1", 6381, 6491, credential="admin:pw") as c:  # doctest: +SKIP
    ...     c.admin("checkHealth", {})["is_health"]
    True
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from kvsim.server.grpc_server import (
    MAX_MESSAGE_BYTES,
    MethodSpec,
    int64_numbers,
    lower_camel,
    method_table,
    struct_numbers,
)

__all__ = ["GrpcClient", "body_to_message", "message_to_reply"]

def body_to_message(body: Mapping[str, Any], request_cls: type[Message]) -> Message:
    """Builds a request message from an HTTP-style JSON body.

    Args:
        body: snake_case (or lowerCamel) field names; int64 as numbers or strings; enums
            as names or integers. Unknown fields are ignored.
        request_cls: The request message class.

    Returns:
        The request message.

    Raises:
        google.protobuf.json_format.ParseError: If a known field has a value of the
            wrong shape (e.g. ``"block_keys": ["x"]``).
    """
    return json_format.ParseDict(dict(body), request_cls(), ignore_unknown_fields=True)


def message_to_reply(msg: Message, *, with_defaults: bool | None = None) -> dict[str, Any]:
    """Converts a response message into an HTTP-style reply dict.

    Args:
        msg: A response message.
        with_defaults: Include scalar and repeated fields at their default value (proto3
            cannot tell them from absent ones). ``None``: only when the reply's
            ``header.status.code`` is ``OK``, so an error reply is just its header, as
            over HTTP.

    Returns:
        snake_case names, enum names, int64 as Python ints (also whole numbers inside
        ``Struct`` fields); unset sub-messages and oneofs are left out.
    """
    if with_defaults is None:
        header = getattr(msg, "header", None)
        with_defaults = header is None or header.status.code == 1  # ErrorCode.OK
    d = json_format.MessageToDict(
        msg,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=with_defaults,
    )
    return struct_numbers(msg.DESCRIPTOR, int64_numbers(msg.DESCRIPTOR, d))


def _method(api: str, method: str) -> MethodSpec:
    table = method_table(api)
    spec = table.get(method) or table.get(lower_camel(method))
    if spec is None:
        raise ValueError(f"{api} service has no method {method!r}; known: {sorted(table)}")
    return spec


class GrpcClient:
    """Calls a MetaService and an AdminService over insecure gRPC channels.

    Args:
        host: Server host.
        meta_port: MetaService port (KVCM's default is 6381).
        admin_port: AdminService port (KVCM's default is 6491); ``None`` for none.
        credential: ``"user:password"`` sent as Basic authorization metadata, or ``None``.
        timeout: Per-call deadline in seconds.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        meta_port: int = 6381,
        admin_port: int | None = 6491,
        *,
        credential: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        h = f"[{host}]" if ":" in host and not host.startswith("[") else host
        self._channels: dict[str, grpc.Channel] = {
            "meta": grpc.insecure_channel(f"{h}:{meta_port}", options=options)
        }
        if admin_port is not None:
            self._channels["admin"] = grpc.insecure_channel(f"{h}:{admin_port}", options=options)
        self.timeout = timeout
        self._metadata: tuple[tuple[str, str], ...] = ()
        self.set_credential(credential)
        self._callables: dict[str, grpc.UnaryUnaryMultiCallable] = {}

    def set_credential(self, credential: str | None) -> None:
        """Sets (or with ``None`` clears) the credential sent with every call.

        Args:
            credential: ``"user:password"`` or ``None``.
        """
        if credential is None:
            self._metadata = ()
        else:
            token = base64.b64encode(credential.encode("utf-8")).decode("ascii")
            self._metadata = (("authorization", f"Basic {token}"),)

    def _callable(self, spec: MethodSpec) -> grpc.UnaryUnaryMultiCallable:
        fn = self._callables.get(spec.path)
        if fn is None:
            channel = self._channels.get(spec.api)
            if channel is None and spec.api == "debug":  # served beside the meta service
                channel = self._channels["meta"]
            if channel is None:
                raise ValueError(f"no {spec.api} port configured")
            fn = channel.unary_unary(
                spec.path,
                request_serializer=spec.request.SerializeToString,
                response_deserializer=spec.response.FromString,
            )
            self._callables[spec.path] = fn
        return fn

    def call(
        self, api: str, method: str, request: Message, *, timeout: float | None = None
    ) -> Message:
        """Sends one typed request.

        Args:
            api: ``"meta"`` or ``"admin"``.
            method: ``GetCacheLocation`` or ``getCacheLocation``.
            request: The request message (of the method's request type).
            timeout: Deadline in seconds; the client's default if ``None``.

        Returns:
            The response message.

        Raises:
            ValueError: For an unknown method or a request of the wrong type.
            grpc.RpcError: If the call fails at the transport level.
        """
        spec = _method(api, method)
        if not isinstance(request, spec.request):
            raise ValueError(
                f"{spec.name} takes {spec.request.DESCRIPTOR.full_name}, "
                f"not {request.DESCRIPTOR.full_name}"
            )
        result: Message = self._callable(spec)(
            request,
            timeout=self.timeout if timeout is None else timeout,
            metadata=self._metadata,
        )
        return result

    def request(self, api: str, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Sends one HTTP-style JSON body and returns the reply as a dict.

        Args:
            api: ``"meta"`` or ``"admin"``.
            method: ``getCacheLocation`` or ``GetCacheLocation``.
            body: The request body (see :func:`body_to_message`).

        Returns:
            The reply (see :func:`message_to_reply`).
        """
        spec = _method(api, method)
        return message_to_reply(self.call(api, spec.name, body_to_message(body, spec.request)))

    def meta(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Calls a MetaService method with a JSON-style body (see :meth:`request`)."""
        return self.request("meta", method, body)

    def admin(self, method: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Calls an AdminService method with a JSON-style body (see :meth:`request`)."""
        return self.request("admin", method, body)

    def close(self) -> None:
        """Closes the channels."""
        for ch in self._channels.values():
            ch.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
