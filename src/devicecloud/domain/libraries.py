"""
Firmware libraries (catalogue §13): what one uploaded version is, and the rules of its metadata.

A library is a name owned by the user who first uploaded it; each upload adds a version, private until
the owner publishes it. The metadata comes from the archive's ``library.properties`` (Arduino 1.5 style
``key=value`` lines), with the rules particle-library-manager checks before it uploads: ``name``,
``version``, ``author`` and ``sentence`` are required, names are ``[A-Za-z0-9][A-Za-z0-9_+-]*`` and
versions ``MAJOR.MINOR.PATCH``. Stdlib only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from devicecloud.domain.text import is_valid_text
from devicecloud.errors import InvalidInput

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*")
VERSION_PATTERN = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")
MAX_NAME_LENGTH = 64
MAX_VALUE_LENGTH = 1_000
MAX_PARAGRAPH_LENGTH = 4_000
MAX_PROPERTIES_BYTES = 16_384
MAX_DEPENDENCIES = 50
REQUIRED_FIELDS = ("name", "version", "author", "sentence")
TEXT_FIELDS = ("author", "license", "sentence", "paragraph", "url", "repository")


class Visibility(StrEnum):
    PRIVATE = "private"
    PUBLIC = "public"


def library_error(description: str) -> InvalidInput:
    """
    A 400 that particle-cli and particle-api-js can show: they read the JSON:API ``errors[].message``, the
    rest of the API's clients ``error_description``; the body carries both.
    """
    return InvalidInput(description, code="invalid_library", errors=[{"message": description}])


def name_key(name: str) -> str:
    """
    Library names are unique and looked up without regard to case.
    """
    return name.lower()


def parse_version(text: str) -> tuple[int, int, int]:
    match = VERSION_PATTERN.fullmatch(text)
    if match is None:
        raise library_error(f"version {text!r} must be formatted like 1.0.0")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch)


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise library_error(
            "name must only contain letters, numbers, dashes, underscores and plus signs, start with a "
            f"letter or number, and be at most {MAX_NAME_LENGTH} characters"
        )
    return name


@dataclass(frozen=True, slots=True)
class LibraryMetadata:
    """
    The fields of ``library.properties`` this server keeps and shows.
    """

    name: str
    version: str
    author: str
    sentence: str
    license: str = ""
    paragraph: str = ""
    url: str = ""
    repository: str = ""
    architectures: tuple[str, ...] = ()
    dependencies: dict[str, str] = field(default_factory=dict)

    @property
    def version_key(self) -> tuple[int, int, int]:
        return parse_version(self.version)

    def to_json(self) -> dict[str, Any]:
        return {
            "author": self.author,
            "sentence": self.sentence,
            "license": self.license,
            "paragraph": self.paragraph,
            "url": self.url,
            "repository": self.repository,
            "architectures": list(self.architectures),
            "dependencies": dict(self.dependencies),
        }

    @classmethod
    def from_json(cls, name: str, version: str, value: dict[str, Any]) -> LibraryMetadata:
        return cls(
            name=name,
            version=version,
            author=str(value.get("author", "")),
            sentence=str(value.get("sentence", "")),
            license=str(value.get("license", "")),
            paragraph=str(value.get("paragraph", "")),
            url=str(value.get("url", "")),
            repository=str(value.get("repository", "")),
            architectures=tuple(str(a) for a in value.get("architectures", [])),
            dependencies={str(k): str(v) for k, v in dict(value.get("dependencies", {})).items()},
        )


def _properties_lines(raw: bytes) -> list[tuple[str, str]]:
    if len(raw) > MAX_PROPERTIES_BYTES:
        raise library_error(f"library.properties is larger than {MAX_PROPERTIES_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise library_error("library.properties is not UTF-8 text") from exc
    text = text.removeprefix("\ufeff")
    pairs: list[tuple[str, str]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "!")):
            continue
        key, sep, value = stripped.partition("=")
        if not sep:
            raise library_error(f"library.properties: line {stripped[:40]!r} is not key=value")
        pairs.append((key.strip(), value.strip()))
    return pairs


def parse_properties(raw: bytes) -> LibraryMetadata:
    """
    ``library.properties`` → metadata, or `InvalidInput` naming the first broken rule.
    """
    values: dict[str, str] = {}
    dependencies: dict[str, str] = {}
    for key, value in _properties_lines(raw):
        if "\x00" in value or not is_valid_text(value):
            raise library_error(f"library.properties: {key} is not text")
        if key.startswith("dependencies."):
            dependency = key.removeprefix("dependencies.")
            check_name(dependency)
            if len(value) > MAX_NAME_LENGTH:
                raise library_error(f"library.properties: the version of dependency {dependency} is too long")
            dependencies[dependency] = value
            continue
        limit = MAX_PARAGRAPH_LENGTH if key == "paragraph" else MAX_VALUE_LENGTH
        if len(value) > limit:
            raise library_error(f"library.properties: {key} is longer than {limit} characters")
        values[key] = value
    if len(dependencies) > MAX_DEPENDENCIES:
        raise library_error(f"library.properties: more than {MAX_DEPENDENCIES} dependencies")
    missing = [name for name in REQUIRED_FIELDS if not values.get(name)]
    if missing:
        raise library_error(f"library.properties: {', '.join(missing)} can't be blank")
    parse_version(values["version"])
    architectures = tuple(
        dict.fromkeys(part.strip() for part in values.get("architectures", "").split(",") if part.strip())
    )
    if "*" in architectures:
        architectures = ()  # "*" and none both mean every architecture
    if len(architectures) > 50 or any(not NAME_PATTERN.fullmatch(a) or len(a) > 64 for a in architectures):
        raise library_error("library.properties: architectures must be a comma-separated list of names")
    return LibraryMetadata(
        name=check_name(values["name"]),
        version=values["version"],
        architectures=architectures,
        dependencies=dependencies,
        **{key: values.get(key, "") for key in TEXT_FIELDS},
    )


@dataclass(frozen=True, slots=True)
class Library:
    """
    A library name and what belongs to all of its versions.
    """

    id: int
    name: str
    owner_id: int
    official: bool
    verified: bool
    installs: int
    created_at: datetime
    published_at: datetime | None


@dataclass(frozen=True, slots=True)
class LibraryVersion:
    """
    One uploaded version: its metadata, where its archive is, and the key its download link carries.
    """

    id: int
    library_id: int
    metadata: LibraryMetadata
    visibility: Visibility
    archive_key: str
    download_key: str
    size: int
    sha256: str
    uploaded_at: datetime
    published_at: datetime | None


@dataclass(frozen=True, slots=True)
class LibraryView:
    """
    What a caller sees of a library: the library and the version shown to them.
    """

    library: Library
    version: LibraryVersion


SCOPES = ("all", "official", "verified", "public", "mine", "private")
SORTS = ("name", "installs", "popularity", "published", "updated", "created", "official", "verified")


@dataclass(frozen=True, slots=True)
class LibraryQuery:
    """
    One page of ``GET /v1/libraries``: checked parameters, for the repository to run.
    """

    viewer_id: int
    scope: str = "all"
    exclude: tuple[str, ...] = ()
    filter: str = ""
    architectures: tuple[str, ...] = ()
    sort: str = "popularity"
    descending: bool = True
    offset: int = 0
    limit: int = 10
