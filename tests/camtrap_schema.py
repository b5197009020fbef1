"""A small validator for Camtrap DP 1.0.2 packages, from the standard's own files.

``validate_package(folder)`` checks a package folder and returns a list of problems (empty:
valid):

1. ``datapackage.json`` against ``camtrap-dp-profile.json`` (JSON Schema draft-04) with
   ``jsonschema``, plus the profile's prose rules (the three Camtrap DP resources present).
2. Each CSV against its Frictionless table schema: the header is every field of the schema
   in the schema's order (Frictionless matches header and fields by position, and Camtrap DP
   CSVs carry every field), then per value: missing values (the schema's ``missingValues``),
   ``required``, ``unique``, the type (string, number, integer, boolean, datetime and date
   with their ``format``, any), ``enum``, ``pattern``, ``minimum``/``maximum``,
   ``minLength``/``maxLength``; the ``primaryKey`` is unique; ``foreignKeys`` hold between
   the tables (observations -> deployments and media, media -> deployments).

The standard's files are read in place from ``../shared/camtrap-dp-1.0.2`` (see its
README); nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

from jsonschema import Draft4Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

REPO = Path(__file__).resolve().parents[1]
STANDARD = REPO.parent / "shared" / "camtrap-dp-1.0.2"
RESOURCES = ("deployments", "media", "observations")

FRICTIONLESS_URL = "https://specs.frictionlessdata.io/schemas/data-package.json"
GEOJSON_URL = "http://json.schemastore.org/geojson.json"

# The profile `$ref`s two schemas that are not reachable here (no network): the Frictionless
# Data Package schema and the GeoJSON schema. A `referencing.Registry` resolves both URLs
# offline to the small stand-ins below instead of fetching them (an empty schema `{}` would
# do to evaluate the profile's own rules; the stand-ins add the few Data Package and GeoJSON
# rules a writer can get wrong, written from those specifications).
FRICTIONLESS_STANDIN: dict = {
    "type": "object",
    "required": ["resources"],
    "properties": {
        "profile": {"type": "string"},
        "name": {"type": "string", "pattern": "^([-a-z0-9._/])+$"},
        "id": {"type": "string"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "version": {"type": "string"},
        "homepage": {"type": "string", "format": "uri"},
        "created": {"type": "string", "format": "date-time"},
        "keywords": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "image": {"type": "string"},
        "contributors": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["title"],
                "properties": {
                    "title": {"type": "string"},
                    "path": {"type": "string"},
                    "email": {"type": "string", "format": "email"},
                    "organization": {"type": "string"},
                    "role": {"type": "string"},
                },
            },
        },
        "sources": {
            "type": "array",
            "items": {"type": "object", "required": ["title"]},
        },
        "licenses": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "anyOf": [{"required": ["name"]}, {"required": ["path"]}],
                "properties": {
                    "name": {"type": "string", "pattern": "^([-a-zA-Z0-9._])+$"},
                    "path": {"type": "string"},
                    "title": {"type": "string"},
                },
            },
        },
        "resources": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name"],
                "anyOf": [{"required": ["path"]}, {"required": ["data"]}],
                "properties": {
                    "name": {"type": "string", "pattern": "^([-a-z0-9._/])+$"},
                    "path": {
                        "anyOf": [
                            {"type": "string"},
                            {"type": "array", "minItems": 1, "items": {"type": "string"}},
                        ]
                    },
                    "profile": {"type": "string"},
                    "format": {"type": "string"},
                    "mediatype": {"type": "string", "pattern": "^(.+)/(.+)$"},
                    "encoding": {"type": "string"},
                    "schema": {"type": ["string", "object"]},
                },
            },
        },
    },
}
_POSITION = {"type": "array", "minItems": 2, "maxItems": 3, "items": {"type": "number"}}
GEOJSON_STANDIN: dict = {
    "type": "object",
    "required": ["type"],
    "anyOf": [
        {
            "properties": {"type": {"enum": ["Point"]}, "coordinates": _POSITION},
            "required": ["coordinates"],
        },
        {
            "properties": {
                "type": {"enum": ["Polygon"]},
                "coordinates": {
                    "type": "array",
                    "items": {"type": "array", "minItems": 4, "items": _POSITION},
                },
            },
            "required": ["coordinates"],
        },
        {
            "properties": {
                "type": {
                    "enum": [
                        "MultiPoint",
                        "LineString",
                        "MultiLineString",
                        "MultiPolygon",
                        "GeometryCollection",
                        "Feature",
                        "FeatureCollection",
                    ]
                }
            }
        },
    ],
}

_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("uri")
def _is_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parsed = urlparse(value)
    return bool(parsed.scheme) and bool(parsed.netloc or parsed.path) and " " not in value


@_FORMATS.checks("date", raises=ValueError)
def _is_date(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError(f"{value!r} is not YYYY-MM-DD")
    date.fromisoformat(value)
    return True


@_FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    pattern = r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
    if not re.fullmatch(pattern, value):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time")
    datetime.fromisoformat(value.replace("z", "Z"))
    return True


@_FORMATS.checks("email")
def _is_email(value: object) -> bool:
    return not isinstance(value, str) or re.fullmatch(r"[^@\s]+@[^@\s]+", value) is not None


@dataclass(frozen=True)
class Standard:
    """The standard's profile and table schemas."""

    folder: Path
    profile: dict
    schemas: Mapping[str, dict]  #: resource name -> table schema


@cache
def load_standard(folder: Path = STANDARD) -> Standard:
    """Read the profile and the three table schemas from ``folder``."""
    profile = json.loads((folder / "camtrap-dp-profile.json").read_text(encoding="utf-8"))
    schemas = {
        name: json.loads((folder / f"{name}-table-schema.json").read_text(encoding="utf-8"))
        for name in RESOURCES
    }
    return Standard(folder, profile, schemas)


def _registry() -> Registry:
    return Registry().with_resources(
        [
            (FRICTIONLESS_URL, Resource.from_contents(FRICTIONLESS_STANDIN, DRAFT4)),
            (GEOJSON_URL, Resource.from_contents(GEOJSON_STANDIN, DRAFT4)),
        ]
    )


def validate_descriptor(descriptor: dict, standard: Standard | None = None) -> list[str]:
    """Problems of a ``datapackage.json`` descriptor against the profile."""
    standard = standard or load_standard()
    validator = Draft4Validator(standard.profile, registry=_registry(), format_checker=_FORMATS)
    problems = [
        f"datapackage.json {'/'.join(str(p) for p in err.absolute_path) or '(root)'}: {err.message}"
        for err in sorted(validator.iter_errors(descriptor), key=lambda e: list(e.path))
    ]
    names = [r.get("name") for r in descriptor.get("resources", []) if isinstance(r, dict)]
    for name in RESOURCES:
        if names.count(name) != 1:
            problems.append(f"datapackage.json resources: needs exactly one {name!r} resource")
    return problems


# ------------------------------------------------------------------------------- tables

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?INF|NaN")
_INTEGER = re.compile(r"[+-]?\d+")
_TRUE = ("true", "True", "TRUE", "1")
_FALSE = ("false", "False", "FALSE", "0")
_DEFAULT_FORMATS = {"datetime": "%Y-%m-%dT%H:%M:%SZ", "date": "%Y-%m-%d"}


def _cast(value: str, field: dict) -> object:
    """``value`` as the field's type; ValueError when it is not one."""
    kind = field.get("type", "string")
    fmt = field.get("format", "default")
    if kind in ("string", "any"):
        return value
    if kind == "number":
        if not _NUMBER.fullmatch(value):
            raise ValueError("not a number")
        return float(value)
    if kind == "integer":
        if not _INTEGER.fullmatch(value):
            raise ValueError("not an integer")
        return int(value)
    if kind == "boolean":
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ValueError("not a boolean (true/false)")
    if kind in ("datetime", "date"):
        if fmt == "any":
            parsed = datetime.fromisoformat(value)
        else:
            pattern = _DEFAULT_FORMATS[kind] if fmt == "default" else fmt
            parsed = datetime.strptime(value, pattern)
        if kind == "date":
            return parsed.date()
        return parsed
    raise ValueError(f"type {kind!r} is not supported by this validator")


def _check_value(value: object, raw: str, field: dict) -> str | None:
    c = field.get("constraints", {})
    if "enum" in c and raw not in c["enum"]:
        return f"{raw!r} is not one of {c['enum']}"
    if "pattern" in c and not re.fullmatch(c["pattern"], raw):
        return f"{raw!r} does not match the pattern {c['pattern']}"
    if "minimum" in c and value < c["minimum"]:  # type: ignore[operator]
        return f"{raw} is below the minimum {c['minimum']}"
    if "maximum" in c and value > c["maximum"]:  # type: ignore[operator]
        return f"{raw} is above the maximum {c['maximum']}"
    if "minLength" in c and len(raw) < c["minLength"]:
        return f"{raw!r} is shorter than {c['minLength']}"
    if "maxLength" in c and len(raw) > c["maxLength"]:
        return f"{raw!r} is longer than {c['maxLength']}"
    return None


def _keys(spec: str | list[str]) -> list[str]:
    return [spec] if isinstance(spec, str) else list(spec)


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV (UTF-8) as text."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        return header, list(reader)


def validate_table(
    path: Path, schema: dict, name: str | None = None, limit: int = 50
) -> tuple[list[str], list[dict[str, str | None]]]:
    """Problems of one CSV against its table schema, and its rows (field -> text, None
    where missing) for the foreign key checks. At most ``limit`` problems are listed."""
    name = name or path.name
    fields = schema["fields"]
    names = [f["name"] for f in fields]
    missing_values = set(schema.get("missingValues", [""]))
    problems: list[str] = []
    header, rows = read_table(path)
    if header != names:
        absent = [n for n in names if n not in header]
        extra = [h for h in header if h not in names]
        detail = f"missing {absent}" if absent else ""
        detail += (", " if detail and extra else "") + (f"extra {extra}" if extra else "")
        problems.append(
            f"{name}: the header must be the schema's fields in order ({detail or 'wrong order'})"
        )
        return problems, []
    records: list[dict[str, str | None]] = []
    seen: dict[str, dict[str, int]] = {
        f["name"]: {} for f in fields if f.get("constraints", {}).get("unique")
    }

    def report(text: str) -> None:
        if len(problems) < limit:
            problems.append(text)
        elif len(problems) == limit:
            problems.append(f"{name}: more problems not listed")

    for number, row in enumerate(rows, start=2):
        if len(row) != len(names):
            report(f"{name} row {number}: {len(row)} values for {len(names)} fields")
            continue
        record: dict[str, str | None] = {}
        for field, raw in zip(fields, row, strict=True):
            where = f"{name} row {number} {field['name']}"
            constraints = field.get("constraints", {})
            if raw in missing_values:
                record[field["name"]] = None
                if constraints.get("required"):
                    report(f"{where}: a value is required")
                continue
            record[field["name"]] = raw
            try:
                value = _cast(raw, field)
            except ValueError as exc:
                fmt = field.get("format")
                report(
                    f"{where}: {raw!r} is not a valid {field.get('type')}"
                    + (f" in the format {fmt}" if fmt else "")
                    + f" ({exc})"
                )
                continue
            problem = _check_value(value, raw, field)
            if problem:
                report(f"{where}: {problem}")
            if field["name"] in seen:
                first = seen[field["name"]].setdefault(raw, number)
                if first != number:
                    report(f"{where}: {raw!r} is not unique (also on row {first})")
        records.append(record)
    key = _keys(schema.get("primaryKey", []))
    if key:
        keys_seen: dict[tuple, int] = {}
        for number, record in enumerate(records, start=2):
            value = tuple(record.get(k) for k in key)
            if any(v is None for v in value):
                report(f"{name} row {number}: primary key {key} is missing")
                continue
            first = keys_seen.setdefault(value, number)
            if first != number:
                report(f"{name} row {number}: primary key {value} repeats row {first}")
    return problems, records


def check_foreign_keys(
    tables: Mapping[str, list[dict[str, str | None]]],
    schemas: Mapping[str, dict],
    limit: int = 50,
) -> list[str]:
    """Problems of the ``foreignKeys`` of each table's schema (missing values skipped)."""
    problems: list[str] = []
    for name, schema in schemas.items():
        for fk in schema.get("foreignKeys", []):
            fields = _keys(fk["fields"])
            target = fk["reference"]["resource"] or name
            target_fields = _keys(fk["reference"]["fields"])
            if target not in tables:
                problems.append(f"{name}: foreign key target {target!r} is absent")
                continue
            known = {tuple(r.get(f) for f in target_fields) for r in tables[target]}
            for number, record in enumerate(tables.get(name, []), start=2):
                value = tuple(record.get(f) for f in fields)
                if any(v is None for v in value) or value in known:
                    continue
                if len(problems) >= limit:
                    return [*problems, "more foreign key problems not listed"]
                problems.append(
                    f"{name}.csv row {number}: foreign key {fields} = {value} has no row "
                    f"in {target} ({target_fields})"
                )
    return problems


def validate_package(folder: Path | str, standard: Standard | None = None) -> list[str]:
    """Every problem of the Camtrap DP package in ``folder`` (empty: valid)."""
    standard = standard or load_standard()
    folder = Path(folder)
    try:
        descriptor = json.loads((folder / "datapackage.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"datapackage.json: cannot read it ({exc})"]
    problems = validate_descriptor(descriptor, standard)
    tables: dict[str, list[dict[str, str | None]]] = {}
    for resource in descriptor.get("resources", []):
        name = resource.get("name") if isinstance(resource, dict) else None
        if name not in RESOURCES:
            continue
        schema_url = str(resource.get("schema", ""))
        if not schema_url.endswith(f"/{name}-table-schema.json"):
            problems.append(f"datapackage.json {name}: schema {schema_url!r} is not its schema")
        path = folder / str(resource.get("path", ""))
        if not path.is_file():
            problems.append(f"{name}: file {resource.get('path')!r} is absent")
            continue
        table_problems, records = validate_table(path, standard.schemas[name], path.name)
        problems += table_problems
        tables[name] = records
    if set(tables) == set(RESOURCES):
        problems += check_foreign_keys(tables, standard.schemas)
    return problems
