"""The recommend path's contract: its errors, the request limits, the served ranker's ``preprocess.json``, and
which model versions go together.

Versions: a ranker export records the ``model_version`` of the user and pin tables it was trained on
(``preprocess.json`` ``embedding_versions``: ``pinnerformer-<digest>``, ``pinsage-<digest>``); the Milvus
collection's name carries the indexed pin tower's version (``<alias>_<version slug>_<hash>``); Feast rows carry
``model_version``. User embeddings, the index and the ranker must come from one PinnerFormer model
(:class:`IncompatibleVersions`), and the feature store's pin embeddings from the PinSage model the ranker was
trained on (:func:`pin_mismatch`; the recommend path then ranks by retrieval similarity and says why).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from components.serving import ranker_io
from components.serving.model_repository import PREPROCESS

REQUEST_FIELDS = {"user_id", "k", "surface", "exclude", "candidates"}  # POST /v1/recommend
MAX_EXCLUDE = 10_000


class RecommendError(RuntimeError):
    """A recommend-path problem naming the store, index or server and what was expected."""


class RequestError(ValueError):
    """A bad request: names the field and what was expected (the service answers 422)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class DependencyError(RecommendError):
    """A dependency (``feast``, ``milvus``, ``triton``) failed; the service answers 503 naming it."""

    def __init__(self, dependency: str, message: str):
        super().__init__(f"{dependency}: {message}")
        self.dependency = dependency


class IncompatibleVersions(RecommendError):
    """User embeddings, the indexed pin tower and the ranker do not come from compatible models."""


def check_limits(k: Any, candidates: Any, max_k: int, max_candidates: int) -> None:
    """k in [1, max_k] and candidates in [k, max_candidates] (both integers), else a RequestError naming the field."""
    for name, value, hi in (("k", k, max_k), ("candidates", candidates, max_candidates)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise RequestError(name, f"expected an integer, got {value!r}")
        if not 1 <= value <= hi:
            raise RequestError(name, f"must be between 1 and {hi}, got {value}")


def read_preprocess(path: str | Path) -> tuple[dict[str, Any], str]:
    """(preprocess.json of the served ranker, its digest); a malformed file is a RecommendError naming it."""
    p = find_preprocess(path)
    text = p.read_bytes()
    try:
        pre = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecommendError(f"{p}: not valid JSON ({e}); expected the ranker export's preprocess.json") from None
    if not isinstance(pre, dict):
        raise RecommendError(f"{p}: expected a JSON object, got {type(pre).__name__}")
    need = {"dense": dict, "sparse": dict, "surfaces": list, "tasks": list, "dims": dict}
    for key, typ in need.items():
        if not isinstance(pre.get(key), typ):
            raise RecommendError(f"{p}: field '{key}' missing or not a {typ.__name__} (a ranker export's "
                                 f"preprocess.json has {', '.join(need)})")
    for key in ("d_user", "d_pin"):
        if not isinstance(pre["dims"].get(key), int):
            raise RecommendError(f"{p}: field 'dims.{key}' missing or not an integer")
    for key in ("names", "mean"):
        if not isinstance(pre["dense"].get(key), list):
            raise RecommendError(f"{p}: field 'dense.{key}' missing or not a list")
    if not isinstance(pre["sparse"].get("names"), list):
        raise RecommendError(f"{p}: field 'sparse.names' missing or not a list")
    return pre, "ranker-" + hashlib.sha256(text).hexdigest()[:12]


def version_slug(version: str | None) -> str:
    """A model version as milvus_index.collection_name spells it."""
    return re.sub(r"[^0-9A-Za-z_]", "_", version or "v")[:40]


def collection_version(collection: str, alias: str) -> str | None:
    """The embedding version part of a collection name ``<alias>_<version slug>_<10 hex>`` (None if not one)."""
    m = re.fullmatch(re.escape(alias) + r"_(.+)_[0-9a-f]{10}", collection or "")
    return m.group(1) if m else None


def find_preprocess(path: str | Path) -> Path:
    """preprocess.json from a file, an export directory or a materialised model repository."""
    path = Path(path)
    for p in (path, path / ranker_io.PREPROCESS_FILE, path / PREPROCESS / "1" / ranker_io.PREPROCESS_FILE):
        if p.is_file():
            return p
    raise FileNotFoundError(f"{path}: no {ranker_io.PREPROCESS_FILE} (expected a file, an export dir or a Triton "
                            f"model repository)")


def pin_mismatch(pin_version: str | None, versions: dict[str, Any]) -> str | None:
    """Why the feature store's pin embeddings (``pin_version``) cannot feed the ranker, or None: both versions
    are recorded (a PinSage table's ``pinsage-<model digest>``) and differ."""
    want = versions.get("ranker_pin_embeddings")
    if not pin_version or not want or pin_version == want:
        return None
    return (f"feature store pin embeddings of '{pin_version}' but the ranker ({versions.get('ranker')}) was trained "
            f"on '{want}': publish the pin embeddings and the ranker from the same PinSage model")


def parse_request(body: bytes, default_k: int, default_candidates: int) -> dict[str, Any]:
    """The recommend request from a JSON body; RequestError naming the field otherwise."""
    try:
        req = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError("body", f"not valid JSON ({e})") from None
    if not isinstance(req, dict):
        raise RequestError("body", f"expected a JSON object, got {type(req).__name__}")
    unknown = sorted(set(req) - REQUEST_FIELDS)
    if unknown:
        raise RequestError(unknown[0], f"unknown field; expected {', '.join(sorted(REQUEST_FIELDS))}")
    if "user_id" not in req:
        raise RequestError("user_id", "required (an integer)")
    out: dict[str, Any] = {"k": default_k, "candidates": default_candidates, "surface": "homefeed", "exclude": []}
    out.update(req)
    for name in ("user_id", "k", "candidates"):
        v = out[name]
        if isinstance(v, bool) or not isinstance(v, int):
            raise RequestError(name, f"expected an integer, got {json.dumps(v)}")
    if not -(2**63) <= out["user_id"] < 2**63:
        raise RequestError("user_id", "out of the int64 range")
    if not isinstance(out["surface"], str):
        raise RequestError("surface", f"expected a string, got {json.dumps(out['surface'])}")
    ex = out["exclude"]
    if ex is None:
        out["exclude"] = ex = []
    if not isinstance(ex, list) or any(isinstance(p, bool) or not isinstance(p, int) for p in ex):
        raise RequestError("exclude", "expected a list of integer pin ids")
    if len(ex) > MAX_EXCLUDE:
        raise RequestError("exclude", f"at most {MAX_EXCLUDE} pin ids, got {len(ex)}")
    return out
