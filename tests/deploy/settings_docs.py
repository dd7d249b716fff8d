"""The settings documentation, generated from `Settings` so it cannot drift from the code.

Writes `.env.example` (your `.env`: local runs and compose overrides), `docker/.env.example` (the container's
defaults) and the settings table of `README.md`. The tests compare the files with what this renders;
after changing a setting, regenerate them:

    .venv/bin/python tests/deploy/settings_docs.py
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from image_grouping import config
from image_grouping.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOT_ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKER_ENV_EXAMPLE = REPO_ROOT / "docker" / ".env.example"
README = REPO_ROOT / "README.md"
TABLE_START, TABLE_END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"

# Read by docker-compose.yml (from the shell or ./.env) to build and wire the stack; not service settings.
COMPOSE_VARIABLES: dict[str, tuple[str, str]] = {
    "MSSQL_SA_PASSWORD": (
        "ChangeMe-Str0ng!",
        "SQL Server's sa password: 8+ characters from 3 of upper, lower, digits, symbols.",
    ),
    "RABBITMQ_PASSWORD": ("change-me", "Password of the RabbitMQ user the worker connects as."),
    "RABBITMQ_USER": ("image-grouping", "RabbitMQ user created on first start."),
    "MSSQL_DATABASE": ("image_grouping", "Database that the mssql-init step creates."),
    "MSSQL_VERSION": ("2022-latest", "Tag of mcr.microsoft.com/mssql/server."),
    "MSSQL_PID": ("Developer", "SQL Server edition or product key (Developer, Express, Standard, ...)."),
    "MSSQL_PORT": ("1433", "Host port of SQL Server, bound to 127.0.0.1."),
    "RABBITMQ_PORT": ("5672", "Host port of AMQP, for the uploader."),
    "RABBITMQ_MANAGEMENT_PORT": ("15672", "Host port of the management UI, bound to 127.0.0.1."),
    "ODBC_DRIVER": ("msodbcsql18", "Build argument: msodbcsql18 (Microsoft) or freetds."),
    "ODBC_DRIVER_NAME": (
        "ODBC Driver 18 for SQL Server",
        "Driver name in the connection string; FreeTDS when ODBC_DRIVER=freetds.",
    ),
    "IMAGE": ("image-grouping:latest", "Tag of the worker image that compose builds."),
    "IMAGES_HOST_DIR": ("./images", "Host folder of the uploader's images, mounted read-only at /images."),
}
# Compose variables that docker compose cannot start without; uncommented in .env.example.
REQUIRED_COMPOSE_VARIABLES = {"MSSQL_SA_PASSWORD", "RABBITMQ_PASSWORD"}

# Settings that .env.example sets outright: the original service's defaults, harmless for local runs.
ROOT_ENV_ACTIVE = {"SERVICE", "MODE", "INTERVAL_SECONDS", "RECOGNIZER_ARGS"}

# The container's values where they differ from the defaults (paths of the image, JSON logs, metrics on).
CONTAINER_VALUES = {
    "SYSTEM_STORAGE": "/data",
    "THUMBNAIL_SAVE_PATH": "/data/thumbnails",
    "IMAGE_SAVE_PATH": "/data/images",
    "LOG_ROOT": "/app",
    "LOG_FORMAT": "json",
    "METRICS_PORT": "9100",
}
# Set by docker-compose.yml's `environment:` from the variables above; docker/.env.example leaves them out.
COMPOSE_WIRED = {"RABBITMQ_URL", "SQL_CONNECTION_STRING"}


@dataclass(frozen=True)
class SettingDoc:
    variable: str
    default: str
    description: str
    section: str


def setting_docs() -> list[SettingDoc]:
    """Every field of Settings, in declaration order, with the `# --- Section ---` comment above it."""
    source = inspect.getsource(config)
    lines = source.splitlines()
    class_node = next(
        node for node in ast.parse(source).body if isinstance(node, ast.ClassDef) and node.name == "Settings"
    )
    field_lines = {
        node.target.id: node.lineno
        for node in class_node.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    docs = []
    for name, field in Settings.model_fields.items():
        section = "Settings"
        for line in reversed(lines[: field_lines[name] - 1]):
            heading = re.match(r"\s*# -+ (.+?) -+\s*$", line)
            if heading:
                section = heading.group(1)
                break
        docs.append(SettingDoc(name.upper(), _as_text(field.default), field.description or "", section))
    return docs


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _env_value(value: str) -> str:
    # Quote what a .env parser would otherwise split or interpolate.
    return f'"{value}"' if re.search(r"[\s#$\"';{}]", value) else value


def render_root_env() -> str:
    out = [
        "# Copy to .env. Read by local runs (`image-grouping ...`, `make scan`) and by docker compose,",
        "# which also passes it to the worker after docker/.env.example. Commented lines show the defaults.",
        "# Generated from image_grouping/config.py by tests/deploy/settings_docs.py; edit there.",
        "",
        "# === docker compose (stack wiring, not service settings) ===",
    ]
    for variable, (default, description) in COMPOSE_VARIABLES.items():
        prefix = "" if variable in REQUIRED_COMPOSE_VARIABLES else "# "
        out += [f"# {description}", f"{prefix}{variable}={_env_value(default)}"]
    out += _settings_lines(lambda doc: (doc.default, doc.variable not in ROOT_ENV_ACTIVE))
    return "\n".join(out) + "\n"


def render_docker_env() -> str:
    out = [
        "# The worker container's settings (docker-compose.yml `env_file`, before ./.env, which wins).",
        "# RABBITMQ_URL and SQL_CONNECTION_STRING are wired by docker-compose.yml to its own containers.",
        "# Generated from image_grouping/config.py by tests/deploy/settings_docs.py; edit there.",
    ]

    def value_and_commented(doc: SettingDoc) -> tuple[str, bool]:
        value = CONTAINER_VALUES.get(doc.variable, doc.default)
        return value, doc.variable in COMPOSE_WIRED or value == ""

    out += _settings_lines(value_and_commented)
    return "\n".join(out) + "\n"


def _settings_lines(value_and_commented: Callable[[SettingDoc], tuple[str, bool]]) -> list[str]:
    out: list[str] = []
    section = None
    for doc in setting_docs():
        if doc.section != section:
            section = doc.section
            out += ["", f"# === {section} ==="]
        value, commented = value_and_commented(doc)
        out += [f"# {doc.description}", f"{'# ' if commented else ''}{doc.variable}={_env_value(value)}"]
    return out


def render_readme_table() -> str:
    rows = ["| Variable | Default | What it does |", "| --- | --- | --- |"]
    for doc in setting_docs():
        default = f"`{doc.default}`" if doc.default else "(unset)"
        description = doc.description.replace("|", r"\|")
        rows.append(f"| `{doc.variable}` | {default} | {description} |")
    return "\n".join(rows)


def readme_with_table(readme: str) -> str:
    start, end = readme.index(TABLE_START) + len(TABLE_START), readme.index(TABLE_END)
    return readme[:start] + "\n" + render_readme_table() + "\n" + readme[end:]


if __name__ == "__main__":
    ROOT_ENV_EXAMPLE.write_text(render_root_env())
    DOCKER_ENV_EXAMPLE.write_text(render_docker_env())
    README.write_text(readme_with_table(README.read_text()))
    print(f"wrote {ROOT_ENV_EXAMPLE}, {DOCKER_ENV_EXAMPLE} and the settings table of {README}")
