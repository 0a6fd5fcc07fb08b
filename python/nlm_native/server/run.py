"""Running the server: JSON log lines, uvicorn, graceful shutdown."""

from __future__ import annotations

import json
import logging
import sys

from .config import ServerConfig


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a message that already is one is merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name}
        msg = record.getMessage()
        try:
            extra = json.loads(msg)
            out.update(extra if isinstance(extra, dict) else {"message": msg})
        except ValueError:
            out["message"] = msg
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("nlm_native")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def serve(config: ServerConfig) -> None:
    """Loads the model, serves until SIGINT / SIGTERM, then drains and flushes the stores."""
    import uvicorn

    from .app import create_app

    configure_logging()
    app = create_app(config)
    uvicorn.run(app, host=config.host, port=config.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=int(config.drain_seconds) + 5)
