"""The HTTP side: the API, webhooks, metrics, the status page and what guards them (the only
starlette/uvicorn users)."""

__all__: list[str] = []
