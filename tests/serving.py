"""Starting an ASGI app on a free loopback port for a test: the server and chat-page tests share it."""
from __future__ import annotations

import socket
import threading
import time


def serve_app(app, start_timeout: float = 20.0):
    """Runs `app` with uvicorn in a daemon thread on 127.0.0.1:<free port>; returns (base URL, server).
    Stop it with `server.should_exit = True`."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + start_timeout
    while not server.started:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server
