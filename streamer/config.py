"""Typed settings: YAML in, validated models out, errors that name the field path."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streamer.colors import parse_color_bgr
from streamer.config_yaml import YamlError, load_yaml
from streamer.errors import ConfigError
from streamer.sharding import SINGLE, Shard
from streamer.sources.http_input import check_options, is_http
from streamer.sources.protocols import lower_scheme, refused_protocol

MIB = 1024 * 1024
REPLY_TO_MAX_CHARS = 256
TOKEN_FILE_MAX_BYTES = 4096
SHARD_PLACEHOLDER = "{shard}"
# Where "{shard}" is replaced (paths in the YAML tree; "*" is any list index): the endpoints, and
# the shm rings' names and directories (two shards on one host cannot share a ring).
SHARD_FIELDS = (
    ("detections", "bind"),
    ("detections", "advertise"),
    ("detections", "connect", "*"),
    ("tap", "bind"),
    ("publish", "*", "bind"),
    ("publish", "*", "shm", "name"),
    ("publish", "*", "shm", "dir"),
    ("preview", "host"),
    ("preview", "port"),
    ("preview", "metrics_port"),
    ("metrics", "host"),
    ("metrics", "port"),
)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"  # a DNS name's label (RFC 1123)
# A host of dot-separated labels (libzmq refuses a host starting with '-' or '.' outright, so
# such a reply_to would raise in a detector's connect), an IPv4 address, or an IPv6 one in [].
_TCP_REPLY = re.compile(
    rf"tcp://(\*|{_LABEL}(?:\.{_LABEL})*|\[([0-9A-Fa-f:.]{{2,45}})\]):([0-9]{{1,5}})"
)
MAX_HOST_CHARS = 253
_IPC_REPLY = re.compile(r"ipc://[\x21-\x7e]{1,250}")


def _unspecified(host: str, ipv6: str | None) -> bool:
    """Whether `host` is the unspecified address in any spelling a resolver reads as it ("0",
    "0.0.0.00", "0x0", "[::]", "[::ffff:0.0.0.0]"): where a detector cannot send. ValueError
    for a bracketed host that is no IPv6 address."""
    if ipv6 is not None:
        try:
            a = ipaddress.IPv6Address(ipv6)
        except ValueError:
            raise ValueError(f"not an IPv6 address: [{ipv6[:45]}]") from None
        return a.is_unspecified or (a.ipv4_mapped is not None and a.ipv4_mapped.is_unspecified)
    try:
        return socket.inet_aton(host) == bytes(4)  # (the forms getaddrinfo takes for IPv4)
    except OSError:
        return False


def check_reply_to(value: object, allow_ipc: bool = True) -> str:
    """`value` if it is an endpoint a detector may send detections to: ``tcp://host:port``
    (not a wildcard host) or, when `allow_ipc`, ``ipc://path``; printable ASCII, at most
    REPLY_TO_MAX_CHARS long. Raises ValueError saying why not. Used on the config's advertised
    address and, by streamer.client, on every tapped frame's ``reply_to`` (hostile input)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string endpoint, got {type(value).__name__}")
    if len(value) > REPLY_TO_MAX_CHARS:
        raise ValueError(f"endpoint longer than {REPLY_TO_MAX_CHARS} characters")
    if _IPC_REPLY.fullmatch(value):
        if not allow_ipc:
            raise ValueError(
                f"{value!r}: ipc:// reply_to not followed (allow_ipc_reply_to for one host)"
            )
        return value
    m = _TCP_REPLY.fullmatch(value)
    if m is None:
        raise ValueError(
            f"expected tcp://HOST:PORT or ipc://PATH, got {value[:REPLY_TO_MAX_CHARS]!r}"
        )
    if len(m.group(1)) > MAX_HOST_CHARS:
        raise ValueError(f"host longer than {MAX_HOST_CHARS} characters in {value!r}")
    if m.group(1) == "*" or _unspecified(m.group(1), m.group(2)):
        raise ValueError(f"{value!r} is a wildcard address: give one a detector can reach")
    if not 1 <= int(m.group(3)) <= 65_535:
        raise ValueError(f"port must be 1..65535 in {value!r}")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CropConfig(_Model):
    """Background removal outside instance masks (dynamic_crop@v1 semantics)."""

    mask_opacity: float = Field(0.0, ge=0.0, le=1.0, description="0 keeps crops unchanged")
    background_color: str | list[int] = Field(
        "#000000", description="RGB colour: '#RRGGBB', '#RGB', '(r, g, b)' or [r, g, b]"
    )

    @field_validator("background_color")
    @classmethod
    def _color(cls, v: str | list[int]) -> str | list[int]:
        parse_color_bgr(v)
        return v

    @property
    def background_bgr(self) -> tuple[int, int, int]:
        return parse_color_bgr(self.background_color)


MAX_SOURCES = 256  # per process: a config file's, and what the control API may add
MAX_CONFIG_BYTES = 1 * MIB  # a config file (256 sources with their settings: ~100 KB)
SYNTHETIC_PREFIX = "synthetic:"
# Bounds of a synthetic scene's options (name -> (min, max)): its picture is allocated up front.
SYNTHETIC_BOUNDS = {
    "width": (16, 4096),
    "height": (16, 4096),
    "fps": (1, 120),
    "seed": (0, 2**31 - 1),
    "plates": (0, 32),
    "blobs": (0, 32),
}


@dataclass(frozen=True, slots=True)
class SyntheticSpec:
    """A ``synthetic:`` source's options, parsed from its URL."""

    width: int = 1280
    height: int = 720
    fps: int = 30
    seed: int = 1
    plates: int = 3
    blobs: int = 3

    @classmethod
    def from_url(cls, url: str) -> SyntheticSpec:
        """``synthetic:width=1280&height=720&fps=30&seed=1&plates=3&blobs=3`` (all optional).
        Raises ValueError naming the bad option."""
        query = url[len(SYNTHETIC_PREFIX) :].lstrip("?")
        try:
            pairs = parse_qsl(query, strict_parsing=bool(query))
        except ValueError:
            raise ValueError(f"synthetic options must be name=value&...: {query[:100]!r}") from None
        fields: dict[str, int] = {}
        for name, value in pairs:
            if name not in SYNTHETIC_BOUNDS:
                raise ValueError(f"unknown synthetic source option {name[:40]!r}")
            lo, hi = SYNTHETIC_BOUNDS[name]
            if not (value.isascii() and value.isdigit() and lo <= int(value) <= hi):
                raise ValueError(f"synthetic option {name} must be an integer {lo}..{hi}")
            fields[name] = int(value)
        return cls(**fields)


MAX_URL_CHARS = 4096
MAX_AV_OPTIONS = 64
# The largest picture H.264 and HEVC allow at any level (6.2: 139,264 macroblocks of 16x16;
# HEVC's MaxLumaPs): 8192x4352, 8K. A camera's picture beyond a source's bound is not decoded.
MAX_PIXELS = 35_651_584
SOURCE_ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"  # a camera's id (in topics and messages)


class SourceConfig(_Model):
    """A camera or stand-in. `url`: ``rtsp://...`` (also rtsps, http(s) MJPEG/HLS), ``webcam:0``
    or ``/dev/videoN``, a file path, ``lavfi:<graph>``, or ``synthetic:[k=v&...]``."""

    id: str = Field(pattern=SOURCE_ID_PATTERN, description="used in topics; no '/'")
    url: str = Field(min_length=1, max_length=MAX_URL_CHARS)
    max_fps: float | None = Field(None, gt=0, le=240, description="skip frames evenly above this")
    realtime: bool = Field(
        True,
        description="pace files and test sources at their frame rate; false: as fast as the"
        " pipeline serves them, every frame (the decoder waits instead of dropping)",
    )
    loop: bool = Field(False, description="restart a file at its end")
    crop: CropConfig | None = Field(None, description="overrides the top-level crop settings")
    classes: list[str] | None = Field(None, description="crop only these classes; all when absent")
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport")
    open_timeout_s: float = Field(10.0, gt=0, le=300)
    stall_timeout_s: float = Field(5.0, ge=0.2, le=300, description="no frame this long: reconnect")
    backoff_base_s: float = Field(0.5, gt=0, le=60, description="first retry delay")
    backoff_cap_s: float = Field(30.0, gt=0, le=3600, description="longest retry delay")
    healthy_after_s: float = Field(
        10.0, gt=0, le=3600, description="streaming this long resets back-off"
    )
    av_options: dict[str, str] = Field(
        default_factory=dict,
        max_length=MAX_AV_OPTIONS,
        description="FFmpeg options, passed through (an http(s) camera: of FFmpeg's HTTP "
        "client's, only headers, user_agent, referer, tls_verify, ca_file, cert_file, key_file)",
    )
    max_pixels: int = Field(
        MAX_PIXELS,
        ge=16 * 16,
        le=MAX_PIXELS * 4,
        description="the largest picture (width x height) a network camera or file may have: "
        "a larger one is not handed on (its session ends with an error, counted in too_large, "
        "and is retried). Default: the largest H.264 and HEVC allow, 8192x4352. Not for "
        "webcams (their size is what width and height ask for) or synthetic sources. An http(s) "
        "camera may also send at most this many bytes (and at least 4 MiB) between two packets",
    )
    width: int | None = Field(None, ge=16, le=8192, description="webcam capture width request")
    height: int | None = Field(None, ge=16, le=8192, description="webcam capture height request")
    fps: float | None = Field(None, gt=0, le=240, description="webcam capture rate request")

    @field_validator("url")
    @classmethod
    def _synthetic_options(cls, v: str) -> str:
        v = lower_scheme(v)  # (RTSP://cam is rtsp://cam)
        if v.startswith(SYNTHETIC_PREFIX):
            SyntheticSpec.from_url(v)  # raises ValueError naming the bad option
        if (why := refused_protocol(v)) is not None:
            raise ValueError(why)
        return v

    @model_validator(mode="after")
    def _http_options(self) -> SourceConfig:
        if is_http(self.url):
            check_options(self.url, self.av_options)
        transport = {k.lower(): v for k, v in self.av_options.items()}.get("rtsp_transport", "")
        if "http" in transport.lower():
            raise ValueError(
                "av_options: rtsp_transport http(s) tunnels RTSP through FFmpeg's HTTP client, "
                "which streamer does not bound; use tcp or udp"
            )
        return self

    @model_validator(mode="after")
    def _backoff_order(self) -> SourceConfig:
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("backoff_cap_s must be >= backoff_base_s")
        return self


class RingConfig(_Model):
    """Per-source frames waiting for their detections."""

    max_frames: int = Field(64, ge=1, le=10_000)
    max_bytes: int = Field(512 * MIB, ge=1 * MIB)
    max_age_ms: int = Field(5_000, ge=1, le=600_000)
    max_total_bytes: int = Field(
        128 * MIB,
        ge=1 * MIB,
        description="every source's frames waiting for detections or on their way to the "
        "detector (one budget for the process): a frame is tapped only if it fits (else "
        "not_tapped: budget), and sources turned away take the room that frees up in turn, "
        "the least recently served first; "
        "size it at least sources x tap.max_in_flight x a frame's bytes (1080p I420: 3 MiB) to "
        "keep every frame in flight",
    )


class DetectionsConfig(_Model):
    """Where detections come in: bind a PULL socket, or connect a SUB socket to detector PUBs."""

    bind: str | None = None
    advertise: str | None = Field(
        None,
        description="the bind endpoint as detectors reach it, sent in every tapped frame's "
        "reply_to (default: bind, unless it is a wildcard such as tcp://0.0.0.0:5555)",
    )
    connect: list[str] = Field(default_factory=list)
    pairing: Literal["frame_id", "timestamp"] = Field(
        "frame_id", description="exact frame_id echo, or nearest captured_at within tolerance_ms"
    )
    tolerance_ms: float = Field(20.0, gt=0, le=10_000, description="timestamp pairing window")
    max_message_bytes: int = Field(16 * MIB, ge=1024, le=1024 * MIB)
    max_predictions: int = Field(1_000, ge=1, le=100_000)

    @model_validator(mode="after")
    def _one_endpoint(self) -> DetectionsConfig:
        if (self.bind is None) == (not self.connect):
            raise ValueError("give exactly one of 'bind' (PULL) or 'connect' (SUB)")
        if self.advertise is not None:
            if self.bind is None:
                raise ValueError("advertise goes with bind (detectors PUSH to streamer)")
            try:
                check_reply_to(self.advertise)
            except ValueError as e:
                raise ValueError(f"advertise: {e}") from None
        return self

    @property
    def reply_to(self) -> str | None:
        """Where detectors send the detections of a frame tapped here: `advertise`, else `bind`
        when a detector can reach it as written; None when neither (detectors then use their
        own default endpoint)."""
        if self.advertise is not None:
            return self.advertise
        if self.bind is None:
            return None
        try:
            return check_reply_to(self.bind)
        except ValueError:
            return None


class TapConfig(_Model):
    """Frames published for detectors that do not open the camera themselves."""

    bind: str
    mode: Literal["pub", "push"] = "pub"
    encoding: Literal["raw-i420", "raw-bgr24", "jpeg"] = "raw-bgr24"
    width: int | None = Field(None, ge=16, le=8192, description="downscale to at most this width")
    height: int | None = Field(None, ge=16, le=8192, description="... and at most this height")
    max_fps: float | None = Field(None, gt=0, le=240, description="per source; others not tapped")
    jpeg_quality: int = Field(85, ge=1, le=100)
    hwm: int = Field(4, ge=1, le=10_000, description="frames queued per detector before drops")
    max_in_flight: int = Field(
        4,
        ge=1,
        le=1_000,
        description="per source: frames tapped and still waiting for their detections; past "
        "it new frames are not tapped (not_tapped: busy), so no work goes into frames that "
        "cannot be served in time (and never more than ring.max_frames: a live frame tapped "
        "beyond that would be evicted first). A detector pool needs at least one per worker",
    )


SHM_NAME_PATTERN = r"streamer-[A-Za-z0-9_.-]{1,200}"


class ShmConfig(_Model):
    """Crops in a shared-memory ring instead of in their messages (consumers on this host)."""

    bytes: int = Field(
        32 * MIB,
        ge=1 * MIB,
        le=64 * 1024 * MIB,
        description="ring size, reserved at start (RSS): holds the crops published during the "
        "slowest consumer's lag (Docker's default /dev/shm is 64 MB)",
    )
    dir: Path = Field(Path("/dev/shm"), description="a tmpfs the consumers can read")
    name: str | None = Field(
        None,
        pattern=SHM_NAME_PATTERN,
        description="the ring's file name (default: from the bind endpoint)",
    )


class PublishConfig(_Model):
    """A crop output socket."""

    bind: str
    mode: Literal["pub", "push"] = "pub"
    encoding: Literal["raw-bgr24", "raw-i420", "png", "jpeg", "webp"] = Field(
        "raw-bgr24",
        description="raw-i420: the crop's planes as decoded, no conversion (half the bytes of "
        "raw-bgr24); its rectangle is widened to even coordinates (docs/protocol.md)",
    )
    quality: int | None = Field(
        None, ge=0, le=100, description="png: compression level 0-9 (1); jpeg/webp: 1-100 (90)"
    )
    hwm: int = Field(1_000, ge=1, le=1_000_000, description="messages queued before drops")
    send_timeout_ms: int = Field(100, ge=0, le=60_000, description="push: wait for a worker")
    classes: list[str] | None = Field(None, description="only these classes; all when absent")
    min_confidence: float = Field(0.0, ge=0.0, le=1.0)
    wait_for_subscriber: bool = Field(
        False,
        description="pub: lossless sources (realtime: false) start only once this publisher has "
        "a subscriber, so a consumer that connects with the run loses no crop; live sources "
        "(realtime: true) never wait",
    )
    shm: ShmConfig | None = Field(
        None, description="raw crops in a shared-memory ring; messages carry a handle"
    )

    @model_validator(mode="after")
    def _shm_needs_raw(self) -> PublishConfig:
        if self.shm is not None and not self.encoding.startswith("raw-"):
            raise ValueError(
                f"shm carries raw crops ({self.encoding} crops are small: send them inline)"
            )
        return self

    @model_validator(mode="after")
    def _wait_needs_pub(self) -> PublishConfig:
        if self.wait_for_subscriber and self.mode == "push":
            raise ValueError(
                "wait_for_subscriber applies to mode: pub only (a push socket has no "
                "subscription to wait for; send_timeout_ms is how long it waits for a worker)"
            )
        return self

    @model_validator(mode="after")
    def _quality_fits(self) -> PublishConfig:
        q = self.quality
        if q is None:
            return self
        if self.encoding.startswith("raw-"):
            raise ValueError(f"quality does not apply to {self.encoding}")
        if self.encoding == "png" and q > 9:
            raise ValueError(f"png compression level must be 0..9, got {q}")
        if self.encoding in ("jpeg", "webp") and q < 1:
            raise ValueError(f"{self.encoding} quality must be 1..100, got {q}")
        return self

    @property
    def shm_name(self) -> str | None:
        """The shm ring's file name (None without shm): `shm.name`, or one made from the bind
        endpoint (the same across restarts, so a restart replaces its ring)."""
        if self.shm is None:
            return None
        if self.shm.name is not None:
            return self.shm.name
        return "streamer-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", self.bind).strip("-")[:200]

    @property
    def encoding_key(self) -> str:
        """What the crop stage encodes for this publisher: ``png:6``, ``jpeg``, ..."""
        return self.encoding if self.quality is None else f"{self.encoding}:{self.quality}"


class SourcePatch(_Model):
    """What `PATCH /api/sources/{id}` may change while running; validated like the config."""

    mask_opacity: float | None = Field(None, ge=0.0, le=1.0)
    background_color: str | list[int] | None = None
    classes: list[str] | None = None
    max_fps: float | None = Field(None, gt=0, le=240)

    @field_validator("mask_opacity", "background_color")
    @classmethod
    def _not_null(cls, v: Any) -> Any:
        # Runs only on values given: null means "all" for classes and "no limit" for max_fps,
        # but there is no such thing as a null opacity or colour.
        if v is None:
            raise ValueError("may not be null")
        return v

    @field_validator("background_color")
    @classmethod
    def _color(cls, v: str | list[int] | None) -> str | list[int] | None:
        if v is not None:
            parse_color_bgr(v)
        return v


def parse_source(data: Any) -> SourceConfig:
    """Validate one source, as `POST /api/sources` gets it (an entry of the config's `sources`);
    raise ConfigError with the same messages as check-config, paths relative to the source."""
    if not isinstance(data, dict):
        raise ConfigError("(top level): expected a source object")
    try:
        return SourceConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def parse_patch(data: Any) -> SourcePatch:
    """Validate a control-API patch; raise ConfigError with the same messages as the config."""
    if not isinstance(data, dict):
        raise ConfigError("(top level): expected an object of settings")
    try:
        return SourcePatch.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


class PreviewConfig(_Model):
    """The browser preview (and, later, metrics and control): an HTTP server."""

    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(8080, ge=0, le=65_535)
    token: str | None = Field(None, min_length=8, description="bearer token for every route")
    token_file: str | None = Field(
        None,
        description="read the token from this file instead (a mounted Kubernetes Secret, a "
        "file only the service user reads), once at start; surrounding whitespace ignored",
    )
    ice_servers: list[str] = Field(
        default_factory=list, description="STUN/TURN URLs; none by default (loopback/LAN only)"
    )
    host_candidates: list[str] | None = Field(
        None, description="only offer these local addresses as ICE candidates"
    )
    max_width: int = Field(640, ge=64, le=3840, description="preview picture width cap")
    max_fps: float = Field(10.0, gt=0, le=60, description="preview frame rate cap")
    metrics_port: int | None = Field(
        None, ge=0, le=65_535, description="also serve /metrics and /healthz here, without token"
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, le=300, description="a viewer not connected this long is closed"
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header names accepted besides the bound address (and localhost on"
        " loopback); '*' accepts any (behind a reverse proxy that checks it)",
    )

    @model_validator(mode="before")
    @classmethod
    def _read_token_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("token_file") is None:
            return data
        if data.get("token") is not None:
            raise ValueError("give token or token_file, not both")
        path = data["token_file"]
        if not isinstance(path, str) or not path:
            raise ValueError("token_file: expected a file path")
        try:
            with open(path, "rb") as f:
                raw = f.read(TOKEN_FILE_MAX_BYTES + 1)
        except OSError as e:
            raise ValueError(f"token_file: cannot read {path}: {e.strerror}") from None
        if len(raw) > TOKEN_FILE_MAX_BYTES:
            raise ValueError(f"token_file: {path} is longer than {TOKEN_FILE_MAX_BYTES} bytes")
        try:
            token = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ValueError(f"token_file: {path} is not ASCII text") from None
        if not token.isprintable() or " " in token:
            raise ValueError(f"token_file: {path} holds spaces or control characters")
        # token_file leaves once read: the model (and a re-validated dump of it) holds the token.
        return {**{k: v for k, v in data.items() if k != "token_file"}, "token": token}

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> PreviewConfig:
        """The preview adds and removes cameras (any URL) and changes their settings: beyond
        this machine, only with a token."""
        if self.token is None and not is_loopback_host(self.host):
            raise ValueError(
                f"host {self.host!r} serves the preview beyond this machine, and it adds "
                "cameras and changes settings: give a token (or token_file), or listen on "
                "127.0.0.1"
            )
        return self


class CurveConfig(_Model):
    """ZeroMQ CURVE on every streamer socket (detections, tap, crops); `streamer keygen` makes
    the keys."""

    server_secret_key: str = Field(description="the server's .key_secret certificate file")
    authorized_clients: str = Field(description="directory of the clients' public .key files")
    detector_server_key: str | None = Field(
        None,
        description="with detections.connect: the public .key file of the detectors' PUB"
        " sockets; streamer connects as a CURVE client with its own (server) key pair",
    )


class SecurityConfig(_Model):
    curve: CurveConfig | None = None


class MetricsConfig(_Model):
    """/metrics and /healthz on their own HTTP port, without a token and without the preview
    (a headless site's scraper and probes; with a preview, its `metrics_port` does the same)."""

    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(ge=0, le=65_535, description="0: any free port (the log says which)")


class HealthConfig(_Model):
    """What /healthz checks besides source states, the crop thread and the event loop."""

    unpaired_after_s: float | None = Field(
        10.0,
        gt=0,
        le=3600,
        description="a source is unhealthy when its frames keep coming but no detection has "
        "paired for this long (once one has paired: a source without a tap proves no detector "
        "by its frames), or when no detector has taken its tap's frames for this long (none "
        "subscribed or connected, or none reading; null: "
        "never). It counts the time without any pairing, not a detection's latency, so it need "
        "not exceed ring.max_age_ms: a slow detector still pairs a frame every frame interval; "
        "set it above the longest pause between a detector's answers",
    )
    shed_share: float | None = Field(
        0.5,
        gt=0,
        le=1,
        description="a source that sheds more than this share of the frames it was to serve for "
        "want of CPU or memory (over shed_window_s; frames skipped on purpose, by max_fps or "
        "the tap's rate, are not counted) is named unhealthy, until the share falls below 0.8 "
        "times this (null: never)",
    )
    shed_window_s: float = Field(30.0, ge=1, le=3600)


class StreamerConfig(_Model):
    sources: list[SourceConfig] = Field(min_length=1, max_length=MAX_SOURCES)
    detections: DetectionsConfig
    tap: TapConfig | None = None
    crop: CropConfig = CropConfig()
    ring: RingConfig = RingConfig()
    publish: list[PublishConfig] = Field(min_length=1)
    preview: PreviewConfig | None = None
    metrics: MetricsConfig | None = None
    security: SecurityConfig = SecurityConfig()
    health: HealthConfig = HealthConfig()

    @field_validator("sources")
    @classmethod
    def _unique_ids(cls, v: list[SourceConfig]) -> list[SourceConfig]:
        seen: set[str] = set()
        for s in v:
            if s.id in seen:
                raise ValueError(f"duplicate source id {s.id!r}")
            seen.add(s.id)
        return v

    @model_validator(mode="after")
    def _one_metrics_port(self) -> StreamerConfig:
        preview = self.preview
        if self.metrics is not None and preview is not None and preview.metrics_port is not None:
            raise ValueError("give metrics or preview.metrics_port, not both")
        return self

    @model_validator(mode="after")
    def _distinct_listeners(self) -> StreamerConfig:
        """Two of streamer's own listeners on one port (or ipc path) are refused here, by name,
        rather than found when the second fails to bind (an error that reads as if another
        program held it)."""
        seen: list[tuple[str, str, str, int]] = []  # (setting, family, address, port)
        for name, family, address, port in self._listeners():
            for other, other_family, other_address, other_port in seen:
                same = address == other_address or "*" in (address, other_address)
                if (family, port) == (other_family, other_port) and same:
                    where = f"ipc://{address}" if family == "ipc" else f"port {port}"
                    raise ValueError(
                        f"{other} and {name} both listen on {where}: give each its own"
                    )
            seen.append((name, family, address, port))
        return self

    def _listeners(self) -> list[tuple[str, str, str, int]]:
        """Every address streamer listens on, as (its setting, family, address, port): family
        "4" or "6" (address "*": any), "name" (a host or interface name) or "ipc" (the path;
        port 0). Not ports or paths chosen at bind time (0, ``*``), nor other transports."""
        binds = [("tap.bind", self.tap.bind)] if self.tap is not None else []
        if self.detections.bind is not None:
            binds.append(("detections.bind", self.detections.bind))
        binds += [(f"publish[{i}].bind", p.bind) for i, p in enumerate(self.publish)]
        hosts: list[tuple[str, str, int | str, bool]] = []  # (..., ZeroMQ's: IPv4 only)
        out: list[tuple[str, str, str, int]] = []
        for name, endpoint in binds:
            scheme, _, rest = endpoint.partition("://")
            if scheme == "ipc" and rest != "*":
                out.append((name, "ipc", rest, 0))
            elif scheme == "tcp":
                host, _, digits = rest.rpartition(":")
                hosts.append((name, "0.0.0.0" if host == "*" else host, digits, True))
        if self.preview is not None:
            hosts.append(("preview.port", self.preview.host, self.preview.port, False))
            if self.preview.metrics_port is not None:
                hosts.append(
                    ("preview.metrics_port", self.preview.host, self.preview.metrics_port, False)
                )
        if self.metrics is not None:
            hosts.append(("metrics.port", self.metrics.host, self.metrics.port, False))
        for name, host, given, ipv4_only in hosts:
            digits = str(given).lstrip("0")
            if digits.isascii() and digits.isdigit() and len(digits) <= 5:
                port = int(digits)
                if port <= 65_535:  # (0 is no digits: a port chosen at bind time)
                    out += [
                        (name, family, address, port)
                        for family, address in _families(host, ipv4_only)
                    ]
        return out

    @model_validator(mode="after")
    def _unique_rings(self) -> StreamerConfig:
        seen: set[tuple[Path, str]] = set()
        for p in self.publish:
            if p.shm is None or p.shm_name is None:
                continue
            key = (p.shm.dir, p.shm_name)
            if key in seen:
                raise ValueError(
                    f"two publishers write the shm ring {p.shm.dir / p.shm_name}: give each its "
                    "own shm.name"
                )
            seen.add(key)
        return self

    @model_validator(mode="after")
    def _curve_covers_connect(self) -> StreamerConfig:
        curve = self.security.curve
        if curve is not None and self.detections.connect and curve.detector_server_key is None:
            raise ValueError(
                "security.curve.detector_server_key is required with detections.connect (the"
                " detectors' PUB public key); without it those sockets would not use CURVE"
            )
        return self

    def crop_for(self, source_id: str) -> CropConfig:
        for s in self.sources:
            if s.id == source_id and s.crop is not None:
                return s.crop
        return self.crop


def is_loopback_host(host: str) -> bool:
    """Whether a host (a listen address, a Host header's name) is this machine's loopback only:
    ``localhost`` or a loopback address (any other name is not resolved: it may be anything)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    bare = bare.lower().rstrip(".")
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def _families(host: str, ipv4_only: bool = False) -> list[tuple[str, str]]:
    """What a listen host covers: (family, address) pairs, "*" for any address of a family
    ("" listens on both; IPv6 is bound IPv6-only, as asyncio does). `localhost` is the loopback
    address of each family it is bound in (ZeroMQ's, `ipv4_only`, resolve names to IPv4); any
    other host or interface name is only itself (not resolved: that would ask DNS)."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not bare:
        return [("4", "*"), ("6", "*")]
    if bare.lower() == "localhost":
        return [("4", "127.0.0.1")] if ipv4_only else [("4", "127.0.0.1"), ("6", "::1")]
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return [("name", bare)]
    return [(str(ip.version), "*" if ip.is_unspecified else ip.compressed)]


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def format_validation_error(err: ValidationError) -> str:
    """One line per problem: ``sources[1].url: Field required``."""
    lines = []
    for e in err.errors():
        msg = str(e["msg"]).removeprefix("Value error, ")
        loc = tuple(p for p in e["loc"] if not str(p).startswith("function-after"))
        lines.append(f"{_loc(loc)}: {msg}")
    return "\n".join(lines)


def _matches(path: tuple[int | str, ...], pattern: tuple[str, ...]) -> bool:
    return len(path) == len(pattern) and all(
        (p == "*" and isinstance(k, int)) or p == k for k, p in zip(path, pattern, strict=True)
    )


def substitute_shard(data: Any, shard: Shard) -> Any:
    """A copy of a parsed YAML tree with ``{shard}`` replaced by the shard's index in every
    endpoint and shm ring name and directory (SHARD_FIELDS). Raises ConfigError naming each
    other field that contains it."""
    misplaced: list[str] = []

    def walk(node: Any, path: tuple[int | str, ...]) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, (*path, str(k))) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*path, i)) for i, v in enumerate(node)]
        if isinstance(node, str) and SHARD_PLACEHOLDER in node:
            if any(_matches(path, p) for p in SHARD_FIELDS):
                return node.replace(SHARD_PLACEHOLDER, str(shard.index))
            misplaced.append(_loc(path))
        return node

    out = walk(data, ())
    if misplaced:
        raise ConfigError(
            "\n".join(
                f"{loc}: {SHARD_PLACEHOLDER} is only replaced in endpoints (detections, tap, "
                "publish, preview) and in publish[].shm's name and dir"
                for loc in misplaced
            )
        )
    return out


def parse_config(data: Any, shard: Shard = SINGLE) -> StreamerConfig:
    """Validate a parsed YAML tree for `shard`: ``{shard}`` in endpoints becomes its index and
    only the sources it serves are kept (a shard may serve none). Raise ConfigError naming each
    bad field path."""
    if not isinstance(data, dict):
        raise ConfigError("(top level): expected a mapping of settings")
    try:
        cfg = StreamerConfig.model_validate(substitute_shard(data, shard))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    if shard.count == 1:
        return cfg
    if cfg.tap is not None and cfg.detections.bind is not None and cfg.detections.reply_to is None:
        raise ConfigError(
            f"detections.advertise: required with {shard.count} shards and a tap when "
            f"detections.bind ({cfg.detections.bind}) is a wildcard address: tapped frames "
            "would not say where their detections go (reply_to), so detectors would send them "
            "to their own default endpoint and every shard but one would lose them; give the "
            "address detectors reach this shard's bind at, e.g. "
            "tcp://streamer-{shard}.streamer:5555"
        )
    return cfg.model_copy(update={"sources": [s for s in cfg.sources if shard.serves(s.id)]})


def load_config(path: str | Path, shard: Shard = SINGLE) -> StreamerConfig:
    """Read and validate a YAML config file for `shard` (see parse_config)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{p}: longer than {MAX_CONFIG_BYTES:,} bytes, the most a config file may be (256 "
            "cameras with their settings take about 100 KB)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start})") from None
    try:
        data = load_yaml(text)
    except YamlError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    return parse_config(data, shard)
