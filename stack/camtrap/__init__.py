"""Camtrap DP 1.0.2 packages (TDWG Camera Trap Data Package) of ``jungle predict``'s output.

What the user gives, read and checked before any video work (:func:`read_camtrap_inputs`,
:func:`check_clips`): a deployments CSV (``deploymentID,folder,latitude,longitude,
deploymentStart,deploymentEnd``: which folder of the input holds which camera placement), a
taxonomy CSV (``class,scientificName[,taxonRank,taxonID]``) and optional project metadata
(YAML, :class:`CamtrapProject`).

What :func:`write_camtrap_dp` writes into ``DIR`` (atomically: a sibling temporary folder
then a rename):

``deployments.csv``
    one row per deployment of the deployments CSV (with or without clips), times rendered
    with their own UTC offset.
``media.csv``
    one row per video clip and one per photo of a sequence clip (:class:`Photo`), failed
    clips included: ``mediaID`` a hash of the clip id (a photo's: of its path),
    ``filePath`` the clip id (a photo's path; both relative to the input folder),
    ``timestamp`` the clip's time (a photo's capture time) in its deployment's UTC offset
    (the offset of ``deploymentStart``), ``fileMediatype`` from the extension (``video/*``,
    ``image/*``), ``filePublic`` false.
``observations.csv``
    media-level observations of a video (``observationLevel`` ``media``, ``observationID``
    = ``mediaID_N``), event-level observations of a sequence (``observationLevel``
    ``event``, no ``mediaID``, ``eventID`` a hash of the clip id, ``observationID`` =
    ``eventID_N``). A classified clip gets one ``animal`` (``human`` for a class named
    ``human``) observation per non-blank class whose probability is at least the threshold,
    most likely first; a clip without one gets a ``blank`` observation when p(blank) reaches
    the threshold, else an ``unknown`` one (no probability). A failed clip gets an
    ``unclassified`` observation with the reason in ``observationComments``. A video's
    ``eventStart`` and ``eventEnd`` are its time plus the span of the frames showing the
    class (:func:`evidence_spans`), else the whole clip; a sequence's are its first and last
    photos' times (Camtrap DP 1.0.2 media rows carry no eventID: readers link an event's
    media by deploymentID and ``eventStart <= timestamp <= eventEnd``).
``datapackage.json``
    the package descriptor: the 1.0.2 profile and table schema URLs, contributors and
    project (:class:`CamtrapProject`), spatial (bounding box of the deployments), temporal
    (first deployment start to last deployment end, dates) and taxonomic (the observed
    scientific names, with the class name as English vernacular name) coverage.

The modules: :mod:`~stack.camtrap.project` (the project YAML),
:mod:`~stack.camtrap.inputs` (the deployments and taxonomy CSVs, the clips' deployments, the
output folder), :mod:`~stack.camtrap.spans` (evidence spans), :mod:`~stack.camtrap.tables`
(deployments and media tables), :mod:`~stack.camtrap.observations` (observations table),
:mod:`~stack.camtrap.package` (the descriptor and the writer), with
:mod:`~stack.camtrap.timestamps` (times) and :mod:`~stack.camtrap.common` (error, helpers).

Every datetime is written as ``YYYY-MM-DDThh:mm:ss`` plus ``Z`` or ``±hh:mm``, the form of
the standard's examples (its schemas' format is ``%Y-%m-%dT%H:%M:%S%z``); seconds are
truncated, except ``eventEnd``, rounded up so that the event covers its evidence. A naive
time (a photo's EXIF capture time: the camera's local clock, no offset) is read in its
deployment's UTC offset.
"""

from stack.camtrap.common import CAMTRAP_DP_VERSION, CamtrapError, Photo
from stack.camtrap.inputs import (
    DEPLOYMENT_COLUMNS,
    DEPLOYMENT_TEXT_COLUMNS,
    HUMAN,
    TAXONOMY_COLUMNS,
    TAXONOMY_OPTIONAL,
    CamtrapInputs,
    check_clips,
    check_out_dir,
    read_camtrap_inputs,
    read_deployments,
    read_taxonomy,
)
from stack.camtrap.inputs import _deployment_ids as _deployment_ids  # tested directly
from stack.camtrap.observations import OBSERVATION_FIELDS
from stack.camtrap.package import PROFILE_URL, SCHEMA_URLS, write_camtrap_dp
from stack.camtrap.project import CamtrapProject, Contributor, Licenses, ProjectInfo, read_project
from stack.camtrap.spans import Spans, SpanTable, evidence_spans
from stack.camtrap.tables import (
    DEPLOYMENT_FIELDS,
    MEDIA_FIELDS,
    MEDIA_TYPES,
    event_id,
    file_path,
    media_id,
    media_type,
)

__all__ = [
    "CAMTRAP_DP_VERSION",
    "DEPLOYMENT_COLUMNS",
    "DEPLOYMENT_FIELDS",
    "DEPLOYMENT_TEXT_COLUMNS",
    "HUMAN",
    "MEDIA_FIELDS",
    "MEDIA_TYPES",
    "OBSERVATION_FIELDS",
    "PROFILE_URL",
    "SCHEMA_URLS",
    "TAXONOMY_COLUMNS",
    "TAXONOMY_OPTIONAL",
    "CamtrapError",
    "CamtrapInputs",
    "CamtrapProject",
    "Contributor",
    "Licenses",
    "Photo",
    "ProjectInfo",
    "SpanTable",
    "Spans",
    "check_clips",
    "check_out_dir",
    "event_id",
    "evidence_spans",
    "file_path",
    "media_id",
    "media_type",
    "read_camtrap_inputs",
    "read_deployments",
    "read_project",
    "read_taxonomy",
    "write_camtrap_dp",
]
