"""Settings: one pydantic-settings class, read from EDGESAM_* environment variables.

Every knob has a default that works on a laptop; bad values fail at start-up with a message
naming the variable. `EDGESAM_CHECKPOINT`, `EDGESAM_HTTP_PORT`, `EDGESAM_GRPC_PORT`,
`EDGESAM_REDIS_URL`, `EDGESAM_BACKEND` and `EDGESAM_API_KEYS` are the public contract.
"""

# No `from __future__ import annotations`: pydantic evaluates these annotations at run time;
# typing's Optional/List/Tuple keep them valid on Python 3.8 (JetPack 5).
import os
from pathlib import Path
from typing import List, Literal, Optional, Tuple

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.compat import Annotated
from service.schemas import BOXES_CAP, POINTS_CAP

GET_WEIGHTS_HINT = (
    "no checkpoint: run `python -m service.weights download` (or set EDGESAM_CHECKPOINT to an "
    "official edge_sam.pth / .safetensors), or set EDGESAM_ALLOW_RANDOM_WEIGHTS=1 to run with "
    "random weights (meaningless masks, for trying the API only)"
)


# EDGESAM_ENCODE_MAX_BATCH's defaults per device (docs/reliability.md, memory)
GPU_ENCODE_MAX_BATCH = 8
CPU_ENCODE_MAX_BATCH = 2


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgesam"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EDGESAM_", extra="ignore", validate_default=True, frozen=True
    )

    # Model
    checkpoint: Optional[Path] = Field(
        None, description="official .pth or .safetensors; unset: the downloaded edge_sam.pth"
    )
    allow_random_weights: bool = False
    weights_dir: Path = Field(default_factory=lambda: default_cache_root() / "weights")
    # auto: TensorRT where it imports and a GPU is present, else PyTorch on CUDA, else the
    # fastest CPU backend as measured (ONNX Runtime), or the one that runs EDGESAM_PRECISION
    # on the CPU; `engine.backends.registry` resolves it at start-up (`runtime()`).
    backend: Literal["torch", "onnxruntime", "tensorrt", "auto"] = "auto"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    # fp32 (exact, the default); fp16/bf16 on a GPU; bf16 (PyTorch) or int8 (ONNX Runtime) on
    # a CPU with the units (engine.precision); auto: bf16 where this CPU has the units (and
    # the backend is auto or torch), else fp32. Resolved with the backend (`runtime_precision`).
    precision: Literal["fp32", "fp16", "bf16", "int8", "auto"] = "fp32"
    # bf16: the decoder's transformer and upscaling under CPU autocast too (PyTorch, a CPU
    # with AVX-512 BF16 or AMX). Pays where many prompts share an image (everything mode);
    # its mask IoU against fp32 is in docs/performance.md. fp32 (the default) keeps it exact.
    decoder_precision: Literal["fp32", "bf16"] = "fp32"
    engine_cache_dir: Path = Field(default_factory=lambda: default_cache_root() / "engines")
    torch_threads: Optional[int] = Field(None, ge=1, le=256)
    # PyTorch on CUDA: torch.compile (each batch bucket compiles at start-up; speed-up and
    # compile times in docs/performance.md) and the Triton RepViT kernel (speed unmeasured).
    torch_compile: bool = False
    torch_triton_mixer: bool = False
    priors_checkpoint: Optional[Path] = Field(
        None,
        description="checkpoint with EdgeSAM's granularity-priors head (fpn.*/rpn_head.*): "
        "point-only prompts then also get the best proposal containing the point as a box",
    )

    # Roles and transports
    role: Literal["all", "encoder", "decoder"] = "all"
    encoder_grpc_target: Optional[str] = None
    # a decoder replica's forwarded embed: all attempts together, and how many (UNAVAILABLE only)
    encoder_forward_timeout_s: float = Field(30.0, gt=0, le=600)
    encoder_forward_attempts: int = Field(3, ge=1, le=10)
    http_host: str = "0.0.0.0"
    http_port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(50051, ge=0, le=65535)  # 0: no gRPC server
    api_keys: Annotated[List[SecretStr], NoDecode] = Field(default_factory=list)
    # onnxruntime-web's dist/ folder, served at /static/ort/ for the page's in-browser
    # decoding; unset: service/webdeps/node_modules/onnxruntime-web/dist (`npm ci` there)
    web_ort_dir: Optional[Path] = None
    # Origins whose pages may call the API from a browser (comma list; `*` any); empty: none
    cors_origins: Annotated[List[str], NoDecode] = Field(default_factory=list)
    drain_seconds: float = Field(20.0, ge=0, le=600)
    # TLS for both transports (certificate chain and key, PEM); with a client CA, clients
    # must present a certificate it signed (mTLS)
    tls_cert_file: Optional[Path] = None
    tls_key_file: Optional[Path] = None
    tls_client_ca_file: Optional[Path] = None
    # with API keys: each key's embeddings and masks in a namespace of its own
    tenant_isolation: bool = False
    # per API key (per client address without keys): a token bucket; 0 = off
    rate_limit_per_second: float = Field(0.0, ge=0, le=100_000)
    rate_limit_burst: int = Field(0, ge=0, le=1_000_000)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Cache
    redis_url: Optional[str] = None
    redis_key_prefix: str = "edgesam:"
    redis_socket_timeout: float = Field(0.5, gt=0, le=30)
    redis_connect_timeout: float = Field(0.5, gt=0, le=30)
    # embedding GET/SET (megabytes each) on a pool of their own: under load a 5 MB read
    # waits on a busy event loop well past the small calls' timeout while Redis is healthy
    redis_bulk_socket_timeout: float = Field(5.0, gt=0, le=60)
    # the breaker opens after this many consecutive failures, for EDGESAM_REDIS_RETRY_SECONDS,
    # then one request probes Redis
    redis_breaker_failures: int = Field(3, ge=1, le=1000)
    redis_retry_seconds: float = Field(2.0, ge=0, le=300)
    # rediss:// only: the CA that signed Redis' certificate (else the system's), and a client
    # certificate where Redis asks for one (tls-auth-clients)
    redis_tls_ca_file: Optional[Path] = None
    redis_tls_cert_file: Optional[Path] = None
    redis_tls_key_file: Optional[Path] = None
    redis_max_connections: int = Field(32, ge=1, le=1024)
    cache_ttl_seconds: int = Field(3600, ge=1, le=30 * 86400)
    # refinement masks (the previous answer's low-res logits): short-lived, never longer
    # than the embeddings they refine
    mask_ttl_seconds: int = Field(600, ge=1, le=30 * 86400)
    # auto: what the encoder computes in, so the cache never rounds an embedding (float32
    # for an fp32 encoder; float16, lossless and half the memory, for fp16 and bf16 ones)
    cache_dtype: Literal["auto", "float16", "float32"] = "auto"
    lru_max_bytes: int = Field(256 * 1024 * 1024, ge=0)

    # Limits
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_json_bytes: int = Field(1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_points: int = Field(64, ge=1, le=POINTS_CAP)
    max_boxes: int = Field(64, ge=1, le=BOXES_CAP)
    # POST /v1/embed: multipart parts named "file" in one request (all within max_body_bytes)
    embed_max_files: int = Field(64, ge=1, le=1024)

    # Images by URL ({"url": ...} to /v1/embed): off while the allow-list is empty. Entries are
    # host names ("images.example.com"), wildcards ("*.example.com"), IP addresses or networks
    # ("10.0.0.0/8"); a private, loopback or otherwise non-global address is connected to only
    # where an address entry lists it (service/url_fetch.py).
    url_allowlist: Annotated[List[str], NoDecode] = Field(default_factory=list)
    url_max_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    url_timeout_seconds: float = Field(10.0, gt=0, le=120)
    url_max_redirects: int = Field(3, ge=0, le=10)

    # Work queues (every one bounded)
    # unset: per device (encode_batch): a batch of 8 on a 2-core CPU peaked at 1.7 GB RSS
    # under an embed storm for no more images/s than 2 (docs/reliability.md)
    encode_max_batch: Optional[int] = Field(None, ge=1, le=64)
    encode_max_wait_ms: float = Field(5.0, ge=0, le=1000)
    encode_max_queue: int = Field(16, ge=1, le=10_000)
    encode_workers: int = Field(1, ge=1, le=64)
    decode_workers: int = Field(2, ge=1, le=256)
    decode_max_queue: int = Field(64, ge=1, le=100_000)
    everything_max_concurrency: int = Field(1, ge=1, le=64)
    retry_after_seconds: int = Field(1, ge=1, le=3600)

    @field_validator("url_allowlist", mode="before")
    @classmethod
    def _split_allowlist(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip().lower() for h in value.split(",") if h.strip()]
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: List[str]) -> List[str]:
        for origin in value:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(
                    f"{origin!r} is not an origin: give scheme://host[:port] (or *), "
                    "comma separated"
                )
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, value: List[SecretStr]) -> List[SecretStr]:
        for key in value:
            if len(key.get_secret_value()) < 8:
                raise ValueError("every API key must be at least 8 characters long")
        return value

    @field_validator(
        "redis_url",
        "encoder_grpc_target",
        "checkpoint",
        "tls_cert_file",
        "tls_key_file",
        "tls_client_ca_file",
        "redis_tls_ca_file",
        "redis_tls_cert_file",
        "redis_tls_key_file",
        "web_ort_dir",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> "Settings":
        if self.checkpoint is not None and not self.checkpoint.is_file():
            raise ValueError(f"EDGESAM_CHECKPOINT={self.checkpoint} is not a file")
        if self.priors_checkpoint is not None:
            if not self.priors_checkpoint.is_file():
                raise ValueError(
                    f"EDGESAM_PRIORS_CHECKPOINT={self.priors_checkpoint} is not a file"
                )
            if self.backend not in ("torch", "auto"):
                raise ValueError("EDGESAM_PRIORS_CHECKPOINT needs EDGESAM_BACKEND=torch")
        torch_only = [
            name
            for name, on in (
                ("EDGESAM_TORCH_COMPILE", self.torch_compile),
                ("EDGESAM_TORCH_TRITON_MIXER", self.torch_triton_mixer),
            )
            if on
        ]
        if torch_only and self.backend not in ("torch", "auto"):
            raise ValueError(f"{' and '.join(torch_only)} need EDGESAM_BACKEND=torch")
        self._check_tls()
        if self.tenant_isolation and not self.api_keys:
            raise ValueError("EDGESAM_TENANT_ISOLATION needs EDGESAM_API_KEYS (a tenant per key)")
        if self.tenant_isolation and self.role == "decoder":
            # a forwarded embed reaches the encoders with this replica's key, not the
            # caller's: it would land in another tenant's namespace
            raise ValueError("EDGESAM_TENANT_ISOLATION is not supported with EDGESAM_ROLE=decoder")
        if self.grpc_port and self.grpc_port == self.http_port:
            raise ValueError("EDGESAM_GRPC_PORT and EDGESAM_HTTP_PORT must differ")
        if self.device.startswith("cpu") and self.precision == "fp16":
            raise ValueError("EDGESAM_PRECISION=fp16 needs a GPU; on the CPU: bf16 or int8")
        if self.device.startswith("cuda") and self.precision == "int8":
            raise ValueError("EDGESAM_PRECISION=int8 runs on the CPU (ONNX Runtime)")
        if self.decoder_precision == "bf16" and (
            self.device.startswith("cuda") or self.backend not in ("torch", "auto")
        ):
            raise ValueError(
                "EDGESAM_DECODER_PRECISION=bf16 is the CPU's PyTorch path "
                "(EDGESAM_BACKEND=torch or auto, on the CPU)"
            )
        return self

    def _check_tls(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("EDGESAM_TLS_CERT_FILE and EDGESAM_TLS_KEY_FILE go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("EDGESAM_TLS_CLIENT_CA_FILE (mTLS) needs EDGESAM_TLS_CERT_FILE")
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ValueError(
                "EDGESAM_REDIS_TLS_CERT_FILE and EDGESAM_REDIS_TLS_KEY_FILE go together"
            )
        for name in (
            "tls_cert_file",
            "tls_key_file",
            "tls_client_ca_file",
            "redis_tls_ca_file",
            "redis_tls_cert_file",
            "redis_tls_key_file",
        ):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"EDGESAM_{name.upper()}={path} is not a file")

    def redis_tls_options(self) -> dict:
        """redis-py's TLS arguments for a rediss:// URL (ignored for redis://)."""
        return {
            "ssl_ca_certs": str(self.redis_tls_ca_file) if self.redis_tls_ca_file else None,
            "ssl_certfile": str(self.redis_tls_cert_file) if self.redis_tls_cert_file else None,
            "ssl_keyfile": str(self.redis_tls_key_file) if self.redis_tls_key_file else None,
        }

    def encode_batch(self, device: str) -> int:
        """EDGESAM_ENCODE_MAX_BATCH, else the device's default (CUDA: 8, CPU: 2)."""
        if self.encode_max_batch is not None:
            return self.encode_max_batch
        return GPU_ENCODE_MAX_BATCH if device.startswith("cuda") else CPU_ENCODE_MAX_BATCH

    def cache_storage_dtype(self, encoder_precision: str) -> str:
        """The dtype embeddings and masks are cached in, `auto` resolved for an encoder
        computing in `encoder_precision` (fp32, fp16, bf16, int8)."""
        if self.cache_dtype != "auto":
            return self.cache_dtype
        return "float32" if encoder_precision == "fp32" else "float16"

    @property
    def needs_torch(self) -> bool:
        """An option only the PyTorch model has is on (granularity priors, which run on the
        PyTorch model; torch.compile; the Triton kernel): `auto` means PyTorch."""
        return bool(
            self.priors_checkpoint is not None
            or self.torch_compile
            or self.torch_triton_mixer
            or self.decoder_precision != "fp32"
        )

    def resolved_device(self) -> str:
        """EDGESAM_DEVICE with `auto` resolved: CUDA when PyTorch sees a GPU, else the CPU."""
        if self.device != "auto":
            return self.device
        # imported here, not at the top: settings are read and checked before torch loads
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu" and self.precision == "fp16":
            raise ValueError(
                f"EDGESAM_PRECISION={self.precision} needs a GPU; EDGESAM_DEVICE=auto found none"
            )
        if device == "cuda" and self.precision == "int8":
            raise ValueError("EDGESAM_PRECISION=int8 runs on the CPU (ONNX Runtime)")
        return device

    def runtime(self) -> Tuple[str, str]:
        """(backend, device) with `auto` resolved on this machine, as `service.backend` loads
        them (`runtime_precision`)."""
        backend, device, _ = self.runtime_precision()
        return backend, device

    def runtime_precision(self) -> Tuple[str, str, str]:
        """(backend, device, precision) with every `auto` resolved by
        `engine.backends.registry`, as `service.backend` loads them: `auto` precision is the
        backend's reduced precision where this CPU has its units, else fp32; an explicit CPU
        precision the CPU lacks the units for is refused (it would run slower than fp32)."""
        from engine.backends.registry import BackendArgs  # torch: see resolved_device

        device = self.resolved_device()
        try:
            args = BackendArgs.resolve(
                self.checkpoint,
                backend=self.backend,
                device=device,
                precision=self.precision,
                needs_torch=self.needs_torch,
                check_units=True,
            )
        except ValueError as exc:
            raise ValueError(f"EDGESAM_PRECISION={self.precision}: {exc}") from None
        return args.backend, args.device, args.precision

    def api_key_values(self) -> List[bytes]:
        return [k.get_secret_value().encode() for k in self.api_keys]

    def resolved_checkpoint(self) -> Optional[Path]:
        """EDGESAM_CHECKPOINT, else the downloaded default checkpoint when present."""
        if self.checkpoint is not None:
            return self.checkpoint
        for name in ("edge_sam.pth", "edge_sam_3x.pth"):
            candidate = self.weights_dir / name
            if candidate.is_file():
                return candidate
        return None
