"""Bounded label values for HTTP requests: method and route template, never the raw path."""

from __future__ import annotations

from core.observability.asgi_types import Scope

__all__ = ["STANDARD_METHODS", "UNMATCHED", "method_label", "route_label"]

UNMATCHED = "<unmatched>"
"""Shared route label of requests that matched no route (404/405 from the router)."""

STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


def method_label(method: str) -> str:
    """The method, or "OTHER" for anything non-standard (clients choose methods freely)."""
    return method if method in STANDARD_METHODS else "OTHER"


def route_label(scope: Scope, status: int) -> str:
    """The route template the framework matched, read from the scope after the app ran.

    Litestar stores it as `scope["path_template"]`; Starlette/FastAPI store the matched route
    object as `scope["route"]` (its `path_format` drops converters: `{id:int}` -> `{id}`). A 405
    counts as unmatched: Litestar rejects the method before recording a template, and labelling
    both frameworks the same matters more than the route of a request no handler served.
    """
    if status == 405:
        return UNMATCHED
    template = scope.get("path_template")
    if template and isinstance(template, str):
        return template
    route = scope.get("route")
    if route is not None:
        template = getattr(route, "path_format", None) or getattr(route, "path", None)
        if template and isinstance(template, str):
            return template
    return UNMATCHED
