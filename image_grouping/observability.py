"""Structured logs (structlog) and Prometheus metrics.

Logs go to stderr (JSON in containers, readable on a terminal) and to the rotating files of the original
service: detection to `{log_root}/image_face_detection/logs`, recognition to
`{log_root}/person_recognition/logs`. A line belongs to a service by the `service` bound in the
contextvars (the consumer binds it with the message id and image id) or by the module that logged it;
lines of neither (start-up, broker) go to both files.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

import structlog
from prometheus_client import Counter, Histogram, start_http_server

from image_grouping.config import Settings

DETECTION = "detection"
RECOGNITION = "recognition"
LOG_FOLDERS = {
    DETECTION: Path("image_face_detection") / "logs",
    RECOGNITION: Path("person_recognition") / "logs",
}
_MODULE_SERVICES = {
    "image_grouping.handlers.detection": DETECTION,
    "image_grouping.vision": DETECTION,
    "image_grouping.handlers.recognition": RECOGNITION,
    "image_grouping.grouping": RECOGNITION,
}
_SHARED_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
    structlog.processors.format_exc_info,
]

MESSAGES_HANDLED = Counter(
    "image_grouping_messages_handled_total", "Messages acknowledged after success.", ["event_type"]
)
MESSAGES_FAILED = Counter(
    "image_grouping_messages_failed_total",
    "Messages that failed: dead-lettered (bad input) or retried (transient).",
    ["event_type", "reason"],
)
PROCESSING_SECONDS = Histogram(
    "image_grouping_processing_seconds",
    "From taking a message to acknowledging it.",
    ["event_type"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
FACES_FOUND = Counter("image_grouping_faces_found_total", "Faces detected and committed.")
QUEUE_LAG_SECONDS = Histogram(
    "image_grouping_queue_lag_seconds",
    "From the event's `time` to the moment the service takes it.",
    ["event_type"],
    buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
)


def configure_logging(settings: Settings) -> None:
    """Route structlog and the standard library's logging through one formatter per destination."""
    json_output = settings.log_format == "json" or (settings.log_format == "auto" and not sys.stderr.isatty())
    console_renderer = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=True)
    )
    structlog.configure(
        # Level first: a debug line that is not logged costs nothing (the others run every processor).
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )

    stderr_handler = logging.StreamHandler()
    stderr_handler.setFormatter(_formatter(console_renderer))
    handlers: list[logging.Handler] = [stderr_handler]
    log_folders = {} if settings.dry_run else LOG_FOLDERS  # a dry run writes nothing, log files included
    for service, folder in log_folders.items():
        directory = settings.log_root / folder
        directory.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            directory / f"{service}.log", maxBytes=10_000_000, backupCount=10, encoding="utf-8"
        )
        file_handler.setFormatter(_formatter(structlog.processors.JSONRenderer()))
        file_handler.addFilter(_ServiceFilter(service))
        handlers.append(file_handler)

    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    # aio-pika and aiormq are chatty at INFO on every reconnect attempt.
    for noisy in ("aio_pika", "aiormq"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # Alembic's set-up lines and faiss's "Could not load library with AVX512 support" (it then loads the
    # build this CPU runs) come at INFO on every command and read like errors: shown at DEBUG only.
    for noisy in ("alembic", "faiss"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING)


def start_metrics_server(port: int | None) -> None:
    if port is not None:
        start_http_server(port)
        structlog.get_logger(__name__).info("metrics served", port=port)


def _formatter(renderer: structlog.typing.Processor) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )


class _ServiceFilter(logging.Filter):
    """Keeps the lines of one service (and the lines of no service) for that service's log folder."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        event = record.msg if isinstance(record.msg, dict) else {}
        service = (
            event.get("service")
            or structlog.contextvars.get_contextvars().get("service")
            or _service_of_module(record.name)
        )
        return service in (None, self.service)


def _service_of_module(logger_name: str) -> str | None:
    for module, service in _MODULE_SERVICES.items():
        if logger_name == module or logger_name.startswith(module + "."):
            return service
    return None
