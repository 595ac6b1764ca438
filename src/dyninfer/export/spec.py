"""The exported policy's JSON spec: its schema, its version, and how it is read back (no torch needed).

``OUT/spec.json`` holds everything the onnxruntime runtime needs besides the graphs: the executor
(``sequential``: run, score, stop or go on; ``upfront``: choose a path per image first), the paths in
order with their graphs, FLOPs and carries, the score (its name, parameters and graph) or the decision
graph and rule, the knob and its calibrated curve, the operating point, the input preprocessing, and a
SHA-256 of every graph file. The spec's own SHA-256 is stored beside it in ``spec.json.sha256``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

FORMAT = "dyninfer-onnx-export"
VERSION = 1

_NUM = {"type": "number"}
_NUMS = {"type": "array", "items": _NUM}
_OPT_STR = {"type": ["string", "null"]}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "dyninfer exported policy",
    "type": "object",
    "required": ["format", "version", "library_version", "method", "executor", "kind", "paths", "knob", "input",
                 "files"],
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "library_version": {"type": "string"},
        "method": {"type": "string"},
        "executor": {"enum": ["sequential", "upfront"]},
        "kind": {"enum": ["pool", "staged", "supernet", "bigsmall"]},
        "paths": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["name", "graph", "flops", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "graph": {"type": "string"},
                "advance_graph": _OPT_STR,
                "flops": _NUM, "skip_flops": _NUM,
                "inputs": {"type": "array", "items": {"type": "string"}},
                "outputs": {"type": "array", "items": {"type": "string"}},
                "precision": {"type": "string"},
                "emits_score": {"type": "boolean"},
                "max_abs_diff": _NUM,
            }}},
        "score": {"type": ["object", "null"], "required": ["name", "params", "graph"],
                  "properties": {"name": {"type": "string"}, "params": {"type": "object"}, "graph": _OPT_STR,
                                 "emitted": {"type": "boolean"}, "max_abs_diff": _NUM}},
        "decision": {"type": ["object", "null"], "required": ["graph", "rule", "cost", "decide_flops"],
                     "properties": {"graph": {"type": "string"}, "rule": {"const": "biased_argmax"}, "cost": _NUMS,
                                    "decide_flops": _NUM, "max_abs_diff": _NUM}},
        "knob": {"type": "object", "required": ["kind", "value", "direction"],
                 "properties": {"kind": {"enum": ["thresholds", "cost_bias"]}, "direction": {"enum": [-1, 1]},
                                "value": {}}},
        "forced": {"type": ["integer", "null"]},
        "operating_point": {"type": ["object", "null"]},
        "curve": {"type": ["object", "null"],
                  "properties": {"settings": {"type": "array"}, "accuracy": _NUMS, "cost": _NUMS}},
        "input": {"type": "object", "required": ["shape", "dtype", "layout", "pixel_range", "accepted_range"],
                  "properties": {"shape": {"type": "array", "items": {"type": "integer"}, "minItems": 3,
                                           "maxItems": 3},
                                 "dtype": {"const": "float32"}, "layout": {"const": "NCHW"},
                                 "pixel_range": _NUMS, "accepted_range": _NUMS}},
        "class_names": {"type": "array", "items": {"type": "string"}},
        "single_graph": {"type": ["object", "null"]},
        "files": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def read_spec(folder: str | os.PathLike) -> dict:
    """Read and check ``folder/spec.json``: its checksum, its format and version, its schema, and the
    checksum of every graph file it names.

    Raises:
        CheckpointError: a missing or changed file (named), or a spec from another version.
    """
    folder = Path(folder)
    path = folder / "spec.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CheckpointError(f"no exported policy at {folder} ({path.name} missing); run `dyninfer export "
                              f"POLICY_DIR --format onnx --out {folder}`") from None
    try:
        stored = (folder / "spec.json.sha256").read_text().strip()
    except FileNotFoundError:
        stored = None
    if stored != text_sha256(text):
        raise CheckpointError(f"{path} does not match its checksum (spec.json.sha256 missing or different); "
                              f"export the policy again")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); export the policy again") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} spec; export the policy again")
    if spec.get("version") != VERSION:
        raise CheckpointError(f"{path} is version {spec.get('version')!r} of the export format (library "
                              f"{spec.get('library_version')}); this library reads version {VERSION}: export the "
                              f"policy again with this library")
    validate_spec(spec, path)
    for rel, digest in spec["files"].items():
        f = folder / rel
        if not f.is_file():
            raise CheckpointError(f"{f} is missing (named in {path}); export the policy again")
        if file_sha256(f) != digest:
            raise CheckpointError(f"{f} is corrupt (its SHA-256 differs from the one in {path}); export the "
                                  f"policy again")
    return spec


def validate_spec(spec: dict, where: str | os.PathLike = "spec") -> None:
    """Check ``spec`` against :data:`SCHEMA` (jsonschema); CheckpointError naming the first problem."""
    import jsonschema

    try:
        jsonschema.validate(spec, SCHEMA)
    except jsonschema.ValidationError as e:
        at = "/".join(str(p) for p in e.absolute_path) or "(top)"
        raise CheckpointError(f"{where} does not follow the export schema at {at}: {e.message}; export the policy "
                              f"again") from None


def write_spec(folder: Path, spec: dict) -> None:
    """Write ``spec.json`` and its checksum (inside a folder that is renamed into place whole)."""
    validate_spec(spec)
    text = json.dumps(spec, indent=1, allow_nan=True) + "\n"
    (folder / "spec.json").write_text(text)
    (folder / "spec.json.sha256").write_text(text_sha256(text) + "\n")
