"""Settings, read from the environment and `.env` files.

Every variable of the original service keeps its name (`SQL_CONNECTION_STRING`, `THUMBNAIL_SAVE_PATH`,
`DB_PREFIX`, `SERVICE`, `MODE`, ...). An invalid value stops start-up with a message naming the variable.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from image_grouping.packs import KNOWN_PACKS, LICENCE_CLEAN_PACK, pack_info

# Values that may hold a password: never echoed back in an error.
_SECRET_VARIABLES = {"SQL_CONNECTION_STRING", "DATABASE_URL", "RABBITMQ_URL", "MSSQL_URL", "API_TOKEN"}


def _per_pack(name: str) -> str:
    """The description's note of each pack's own grouping threshold (the one used when unset)."""
    values = ", ".join(f"{pack.id} {pack.grouping[name]:g}" for pack in KNOWN_PACKS.values())
    return f"Unset: the pack's ({values})."


def _per_pack_detection() -> str:
    values = ", ".join(f"{pack.id} {pack.det_score_threshold:g}" for pack in KNOWN_PACKS.values())
    return f"Unset: the pack's ({values})."


class SettingsError(RuntimeError):
    """The environment holds a value the service cannot start with."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    # --- The original service's settings -------------------------------------------------------------
    sql_connection_string: SecretStr | None = Field(
        default=None, description="ODBC connection string of the SQL Server database (production)."
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="Any SQLAlchemy URL; wins over SQL_CONNECTION_STRING. Default: SQLite in SYSTEM_STORAGE.",
    )
    system_storage: Path = Field(
        default=Path("data"), description="Root of the service's storage; stored paths are relative to it."
    )
    thumbnail_save_path: Path = Field(
        default=Path("data/thumbnails"),
        description="Face thumbnails, a folder per database. Default: SYSTEM_STORAGE/thumbnails.",
    )
    image_save_path: Path = Field(
        default=Path("data/images"),
        description="Where the uploader's images are kept (local mode). Default: SYSTEM_STORAGE/images.",
    )
    db_prefix: str = Field(
        default="", description="UNC prefix of image paths as the uploader stores them, e.g. //server/files."
    )
    container_images_root: Path = Field(
        default=Path("/images"), description="Where DB_PREFIX is mounted inside the container."
    )
    service: Literal["detection", "recognition", "both"] = Field(
        default="recognition", description="Which consumers run: detection, recognition (grouping) or both."
    )
    mode: Literal["oneshot", "loop"] = Field(
        default="oneshot", description="oneshot: process what is pending and exit; loop: repeat."
    )
    interval_seconds: int = Field(default=900, gt=0, description="Pause between runs when MODE=loop.")
    recognizer_args: str = Field(
        default="--recluster", description="Arguments of the recognition run; --recluster regroups all faces."
    )
    dry_run: bool = Field(default=False, description="Compute everything, write and publish nothing.")

    # --- Face analysis ------------------------------------------------------------------------------
    model_pack: str = Field(
        default="buffalo_sc",
        description="Model pack id stored with every embedding: buffalo_sc (non-commercial licence, ships "
        "with the package) or yunet_dlib (commercial use allowed, the licence-clean extra). "
        "With MODEL_DIR it defaults to that folder's name.",
    )
    model_dir: Path | None = Field(
        default=None, description="Folder with another SCRFD + ArcFace pack (e.g. buffalo_l, antelopev2)."
    )
    # Unset keeps existing deployments running with a warning at start-up; production sets it either way.
    accept_non_commercial_models: bool | None = Field(
        default=None,
        description="true: run a pack licensed for non-commercial use only (buffalo_sc); false: refuse to "
        "start with one; unset: run it and warn at start-up.",
    )
    execution_provider: Literal["cpu", "cuda"] = Field(
        default="cpu", description="onnxruntime provider; CUDA is hidden unless this says cuda."
    )
    intra_op_threads: int = Field(
        default=0,
        ge=0,
        description="onnxruntime threads per model run; 0: 1 when ANALYSIS_WORKERS > 1, else all cores.",
    )
    analysis_workers: int = Field(
        default=0, ge=0, description="Images analysed at the same time (sharing the models); 0: one per CPU."
    )
    det_score_threshold: float | None = Field(
        default=None, gt=0, lt=1, description="Detector score threshold. " + _per_pack_detection()
    )
    det_nms_threshold: float = Field(default=0.4, gt=0, lt=1, description="SCRFD NMS IoU threshold.")
    det_input_size: int = Field(default=640, ge=160, description="SCRFD input long side, pixels.")
    # 12: recall on ../shared/eval/detection above plain insightface's at fewer FP/image (bench/detection.py).
    min_face_size: int = Field(
        default=12, ge=1, description="Faces whose shorter box side is smaller (pixels) are dropped."
    )
    det_closeup_padding: float = Field(
        default=2.0, ge=1, description="Close-up view: the image shrunk to 1/N of the input, for big faces."
    )
    # 1.5 halves the second decodes of 12 MP photos; embeddings still agree with insightface's at a median
    # cosine of 0.996 (bench/pipeline.py).
    align_max_upscale: float = Field(
        default=1.5, gt=0, description="JPEGs are decoded large enough that a 112x112 crop enlarges <= this."
    )
    max_image_pixels: int = Field(
        default=100_000_000, gt=0, description="Images with more pixels are rejected as decompression bombs."
    )
    max_image_bytes: int = Field(default=200_000_000, gt=0, description="Larger files are rejected.")
    thumbnail_size: int = Field(default=160, ge=32, description="Thumbnail edge, pixels.")
    thumbnail_margin: float = Field(
        default=0.4, ge=0, description="Margin around the face box, as a share of its size."
    )
    thumbnail_quality: int = Field(default=88, ge=1, le=100, description="Thumbnail JPEG quality.")

    # --- Messaging ----------------------------------------------------------------------------------
    rabbitmq_url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@127.0.0.1:5672/"), description="AMQP URL of RabbitMQ."
    )
    exchange_name: str = Field(default="image-grouping", description="Durable topic exchange.")
    upload_queue: str = Field(default="image-grouping.image-uploaded", description="image.uploaded queue.")
    recluster_queue: str = Field(
        default="image-grouping.recluster",
        description="Grouping queue (shard 0); shard i is RECLUSTER_QUEUE.i.",
    )
    grouping_shards: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Grouping queues libraries are hashed onto; that many replicas group at once. "
        "The same on every replica.",
    )
    dead_letter_exchange: str = Field(default="image-grouping.dlx", description="Dead-letter exchange.")
    dead_letter_queue: str = Field(default="image-grouping.dead-letter", description="Dead-letter queue.")
    prefetch_count: int = Field(default=96, ge=1, description="Unacknowledged messages per consumer.")
    max_in_flight: int = Field(default=64, ge=1, description="Images processed at the same time.")
    detection_batch_size: int = Field(
        default=32,
        ge=1,
        description="image.uploaded messages analysed together and stored in one transaction, at most.",
    )
    grouping_batch_size: int = Field(
        default=200, ge=1, description="faces.detected messages grouped together in one assignment, at most."
    )
    grouping_batch_wait_seconds: float = Field(
        default=2.0, ge=0, description="A batch of faces.detected closes when no new one arrives this long."
    )
    shutdown_grace_seconds: float = Field(
        default=30.0, gt=0, description="On SIGTERM, time for in-flight work to finish."
    )
    liveness_file: Path = Field(
        default=Path("/tmp/image-grouping.alive"), description="Touched while the service is healthy."
    )
    liveness_interval_seconds: float = Field(default=10.0, gt=0, description="How often it is touched.")
    liveness_max_age_seconds: float = Field(
        default=60.0, gt=0, description="healthcheck fails when the liveness file is older than this."
    )
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Prometheus metrics port; unset disables them."
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token the web app (serve) requires on every request; needed off 127.0.0.1.",
    )

    # --- Logging ------------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: JSON when not on a terminal, readable on a terminal."
    )
    log_root: Path = Field(
        default=Path("logs"),
        description="Holds image_face_detection/logs and person_recognition/logs (rotating files).",
    )

    # --- Grouping -----------------------------------------------------------------------------------
    # Cosine similarities of the pack's unit embeddings. Unset: the pack's own value (grouping/params.py),
    # measured on ../shared/eval for each pack.
    grouping_neighbours: int = Field(default=16, ge=2, le=256, description="k of the neighbour graph.")
    grouping_link_similarity: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="Two faces this similar are linked in the neighbour graph. "
        + _per_pack("link_similarity"),
    )
    grouping_merge_similarity: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="Two groups merge when their faces are this similar on average. "
        + _per_pack("merge_similarity"),
    )
    grouping_cohesion_similarity: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="A new person's mean similarity between its faces, at least. "
        + _per_pack("cohesion_similarity"),
    )
    grouping_member_similarity: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="A face less similar to its group's mean is cut loose. " + _per_pack("member_similarity"),
    )
    grouping_vote_similarity: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="A neighbour this similar votes for its person. " + _per_pack("vote_similarity"),
    )
    grouping_min_votes: int = Field(
        default=3, ge=1, description="Votes a face needs to join a person (all faces of a smaller one)."
    )
    grouping_centroid_similarity: float | None = Field(
        default=None,
        ge=-1,
        le=1.01,
        description="A face the votes left out joins a person whose mean face is this alike (over 1: never). "
        + _per_pack("centroid_similarity"),
    )
    grouping_centroid_margin: float | None = Field(
        default=None,
        ge=0,
        le=2,
        description="...and only when it is this much more alike than to any other person's mean face. "
        + _per_pack("centroid_margin"),
    )
    grouping_twin_similarity: float | None = Field(
        default=None,
        ge=-1,
        le=1.01,
        description="Two groups, each the other's nearest by their mean faces, this alike become one person "
        "(over 1: never). " + _per_pack("twin_similarity"),
    )
    grouping_min_faces: int = Field(default=2, ge=1, description="Smallest person a full recluster founds.")
    grouping_found_min_faces: int = Field(
        default=2, ge=2, description="Smallest person incremental assignment founds."
    )
    grouping_found_pair_similarity: float | None = Field(
        default=None,
        ge=-1,
        le=1.01,
        description="Two faces found a person between reclusters this alike (over 1: never). "
        + _per_pack("found_pair_similarity"),
    )
    grouping_min_reliable_faces: int = Field(
        default=1, ge=1, description="Reliable faces (score, size, sharpness, pose) a new person needs."
    )
    grouping_min_det_score: float = Field(default=0.6, ge=0, le=1, description="Reliable face: score.")
    grouping_min_face_px: float = Field(default=32.0, ge=0, description="Reliable face: shorter side, px.")
    grouping_min_sharpness: float | None = Field(
        default=None, ge=0, description="Reliable face: Laplacian variance. " + _per_pack("min_sharpness")
    )
    grouping_max_abs_yaw: float | None = Field(
        default=None, ge=0, le=1, description="Reliable face: |yaw| at most. " + _per_pack("max_abs_yaw")
    )
    grouping_exact_search_limit: int = Field(
        default=20_000, ge=1, description="Above this many faces the neighbour search is approximate."
    )
    grouping_cache_faces: int = Field(
        default=1_000_000,
        ge=0,
        description="Faces the grouping process keeps in memory between batches (2 KB each at 512-d), "
        "least recently used library dropped first; 0: read them from the database for every batch.",
    )
    grouping_cache_window_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Each batch reads again the faces written this long before the previous one: longer than "
        "a write transaction lasts plus the clock skew between hosts.",
    )

    @field_validator("analysis_workers")
    @classmethod
    def _one_worker_per_cpu(cls, value: int) -> int:
        # The CPUs this process may run on (a container's cpuset), not the host's.
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return value or usable or 1

    @field_validator("accept_non_commercial_models")
    @classmethod
    def _licence_gate(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        # A pack whose licence is known to exclude commercial use is refused when production says so.
        pack = pack_info(info.data.get("model_pack", ""))
        if value is False and info.data.get("model_dir") is None and pack and not pack.commercial_use:
            raise ValueError(
                f"MODEL_PACK {pack.id} may not be used commercially ({pack.licence}); set "
                f"MODEL_PACK={LICENCE_CLEAN_PACK} (commercial use allowed) "
                "or ACCEPT_NON_COMMERCIAL_MODELS=true"
            )
        return value

    @field_validator("db_prefix")
    @classmethod
    def _normalise_prefix(cls, value: str) -> str:
        # The uploader writes UNC paths with either slash; compare them in one form.
        return value.replace("\\", "/").rstrip("/")

    @model_validator(mode="after")
    def _storage_paths_follow_system_storage(self) -> Settings:
        # SYSTEM_STORAGE=/srv/faces alone moves everything there, as the local SQLite file already does.
        if "thumbnail_save_path" not in self.model_fields_set:
            self.thumbnail_save_path = self.system_storage / "thumbnails"
        if "image_save_path" not in self.model_fields_set:
            self.image_save_path = self.system_storage / "images"
        return self

    @model_validator(mode="after")
    def _pack_id_from_model_dir(self) -> Settings:
        # Embeddings are stored and grouped under the pack id: with MODEL_DIR it is the folder's name
        # unless MODEL_PACK says otherwise, so detection and grouping always agree on it.
        if self.model_dir is not None and "model_pack" not in self.model_fields_set:
            self.model_pack = self.model_dir.name
        return self

    @property
    def recluster_requested(self) -> bool:
        return "--recluster" in self.recognizer_args.split()


def load_settings(**overrides: object) -> Settings:
    """Read the settings, turning a validation error into one message that names each variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        problems = []
        for item in error.errors():
            variable = "_".join(str(part) for part in item["loc"]).upper() or "settings"
            value = os.environ.get(variable)
            secret = variable in _SECRET_VARIABLES or "PASSWORD" in variable
            shown = f" (got {value!r})" if value is not None and not secret else ""
            problems.append(f"{variable}: {item['msg']}{shown}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
