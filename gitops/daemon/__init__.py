"""The daemon: the loop, its decisions (policy), operator controls, fan-out, promotion, previews,
notifications, retention."""

__all__: list[str] = []
