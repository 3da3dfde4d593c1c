"""The daemon: the loop, its decisions (policy), operator controls, fan-out, promotion, previews,
notifications, retention."""
