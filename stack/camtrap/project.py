"""The project metadata of a Camtrap DP package: the pydantic models of the
``--camtrap-project`` YAML (:class:`CamtrapProject`) and :func:`read_project`."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stack.camtrap.common import URL, CamtrapError, one_line

log = logging.getLogger(__name__)

_PACKAGE_NAME = r"^[-a-z0-9._/]+$"
_EMAIL = r"^[^@\s]+@[^@\s]+$"


class Contributor(BaseModel):
    """A person or organization in ``datapackage.json`` ``contributors``."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, description="Name of the person or organization.")
    email: str | None = Field(None, pattern=_EMAIL, description="E-mail address. Default: none.")
    path: str | None = Field(
        None, pattern=URL, description="URL of the contributor (e.g. ORCID). Default: none."
    )
    role: Literal[
        "contact", "principalInvestigator", "rightsHolder", "publisher", "contributor"
    ] = Field("contributor", description="Role (the profile's vocabulary). Default: contributor.")
    organization: str | None = Field(None, description="Affiliation. Default: none.")


class ProjectInfo(BaseModel):
    """``datapackage.json`` ``project``: the study that made the videos."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="Unique identifier of the project. Default: none.")
    title: str = Field(
        "Camera trap survey",
        min_length=1,
        description="Title of the project (required by the profile). Default: "
        "'Camera trap survey'.",
    )
    acronym: str | None = Field(None, description="Project acronym. Default: none.")
    description: str | None = Field(
        None, description="Description of the project (Markdown). Default: none."
    )
    path: str | None = Field(None, pattern=URL, description="Project website. Default: none.")
    samplingDesign: Literal[
        "simpleRandom",
        "systematicRandom",
        "clusteredRandom",
        "experimental",
        "targeted",
        "opportunistic",
    ] = Field(
        "opportunistic",
        description="Sampling design (the profile's vocabulary). Default: opportunistic "
        "(nothing is known about the design).",
    )
    captureMethod: list[Literal["activityDetection", "timeLapse"]] = Field(
        default_factory=lambda: ["activityDetection"],
        min_length=1,
        description="How the cameras were triggered, one or both of activityDetection, "
        "timeLapse. Default: [activityDetection] (motion-triggered video). With exactly one "
        "method, every media row carries it; with both, media.captureMethod stays empty.",
    )
    individualAnimals: bool = Field(
        False,
        description="Whether the project includes recognizable individuals. Default: false "
        "(jungle does not identify individuals).",
    )

    @field_validator("captureMethod")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("captureMethod lists a method twice")
        return value


class Licenses(BaseModel):
    """``datapackage.json`` ``licenses``: the profile wants one for the data and one for
    the media when any is given. Each is a license identifier (e.g. ``CC0-1.0``) or a URL."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(min_length=1, description="License of the tables (e.g. CC0-1.0).")
    media: str = Field(min_length=1, description="License of the video files (e.g. CC-BY-4.0).")

    @field_validator("data", "media")
    @classmethod
    def _identifier_or_url(cls, value: str) -> str:
        if not (re.match(URL, value) or re.fullmatch(r"[-a-zA-Z0-9._]+", value)):
            raise ValueError(
                f"{value!r} is neither a license identifier (letters, digits, '-', '.', '_', "
                "e.g. CC-BY-4.0) nor a URL"
            )
        return value


class CamtrapProject(BaseModel):
    """Package and project metadata of a Camtrap DP package (``--camtrap-project`` YAML).

    Every key is optional; the defaults give a package that validates against the profile.
    Keys are the standard's own names. Unknown keys are an error.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        "jungle-camtrap-dp",
        pattern=_PACKAGE_NAME,
        description="Package name: lower case letters, digits, '-', '.', '_', '/'. Default: "
        "jungle-camtrap-dp.",
    )
    id: str | None = Field(
        None,
        min_length=1,
        description="Package identifier (e.g. a DOI). Default: a new random UUID per package.",
    )
    title: str = Field(
        "Camera trap videos classified by jungle",
        min_length=1,
        description="Package title. Default: 'Camera trap videos classified by jungle'.",
    )
    description: str | None = Field(
        None,
        description="Package description (Markdown). Default: a sentence saying the "
        "observations are jungle's machine classifications, with its version and threshold.",
    )
    keywords: list[str] = Field(
        default_factory=list, description="Keywords. Default: none (the key is left out)."
    )
    homepage: str | None = Field(None, pattern=URL, description="Package homepage. Default: none.")
    contributors: list[Contributor] = Field(
        default_factory=lambda: [Contributor(title="jungle", role="contributor")],
        min_length=1,
        description="People and organizations (the profile requires at least one). Default: "
        "one contributor titled 'jungle' (replace it with the people responsible).",
    )
    project: ProjectInfo = Field(
        default_factory=ProjectInfo, description="The project; see ProjectInfo's defaults."
    )
    licenses: Licenses | None = Field(
        None, description="Licenses of the data and the media. Default: none (left out)."
    )
    bibliographicCitation: str | None = Field(
        None, description="Recommended citation of the package. Default: none."
    )
    coordinatePrecision: float | None = Field(
        None,
        gt=0,
        description="Precision of the deployments' coordinates (e.g. 0.001). Default: none.",
    )


# model of each YAML mapping, by its key path (list indices dropped): for error messages
_MODELS: dict[tuple[str, ...], type[BaseModel]] = {
    (): CamtrapProject,
    ("project",): ProjectInfo,
    ("contributors",): Contributor,
    ("licenses",): Licenses,
}


def read_project(path: Path | str | None) -> CamtrapProject:
    """The project metadata of the YAML file ``path``; None or an empty file: the defaults
    (see :class:`CamtrapProject`).

    Raises:
        CamtrapError: unreadable YAML, not a mapping, an unknown key or an invalid value.
    """
    if path is None:
        return CamtrapProject()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CamtrapError(f"{path}: cannot read the project file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise CamtrapError(f"{path}: not valid YAML ({one_line(str(exc))})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CamtrapError(f"{path}: expected a mapping of keys to values at the top level")
    try:
        return CamtrapProject.model_validate(data)
    except ValidationError as exc:
        raise CamtrapError(f"{path}: {_pydantic_message(exc)}") from None


def _pydantic_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            parent = tuple(p for p in loc[:-1] if not isinstance(p, int))
            model = _MODELS.get(parent)
            known = f" (known keys: {', '.join(model.model_fields)})" if model else ""
            parts.append(f"unknown key {where}{known}")
        else:
            parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
