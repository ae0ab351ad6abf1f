"""
The firmware library registry (catalogue §13, decision 0019).

Rules: a library name belongs to the user who first uploaded it; only they add versions (each greater than
the last), publish and delete. A version is private (seen by its owner only) until published. Everyone sees
public versions; someone else's private library is `NotFound`, like a missing one. Archives are checked and
rebuilt in memory (`domain.library_archives`) before anything is stored, so a refused upload changes nothing.
Downloads go through a random per-version key in the link, because particle-api-js fetches ``links.download``
without a token; the key is only ever shown to those who may see the version.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from devicecloud.domain.accounts import User
from devicecloud.domain.libraries import (
    NAME_PATTERN,
    SCOPES,
    SORTS,
    Library,
    LibraryQuery,
    LibraryVersion,
    LibraryView,
    Visibility,
    check_name,
    library_error,
    name_key,
    parse_version,
)
from devicecloud.domain.library_archives import ArchiveLimits, LibraryArchive, read_archive
from devicecloud.domain.text import is_valid_text
from devicecloud.errors import Conflict, NotFound, PermissionDenied

if TYPE_CHECKING:
    from devicecloud.clock import Clock
    from devicecloud.store.interfaces import Store, UnitOfWork

MAX_LIMIT = 100
MAX_FILTER = 64


class ArchiveStorage(Protocol):
    """
    Where archives live: files in the data dir today (`store.archives`), an object store later.
    """

    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes | None: ...

    async def delete(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class LibraryPolicy:
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    # Archives read at once: each may hold up to max_unpacked bytes in memory while it is checked.
    concurrent_reads: int = 2


def not_found(name: str) -> NotFound:
    description = f"Library {name[:MAX_FILTER]} not found"
    return NotFound(description, code="not_found", errors=[{"message": description}])


def _text(params: Mapping[str, Any], key: str, default: str = "") -> str:
    value = params.get(key, default)
    if value is None:
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise library_error(f"{key} must be a string")
    return value.strip()


def _integer(params: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    raw = _text(params, key, str(default)) or str(default)
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise library_error(f"{key} must be a whole number from {low} to {high}")
    return int(raw)


def _scopes(raw: str, key: str) -> tuple[str, ...]:
    parts = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    unknown = [part for part in parts if part not in SCOPES]
    if unknown:
        raise library_error(f"{key} must be among {', '.join(SCOPES)}, not {unknown[0][:20]}")
    return parts


def _architectures(raw: str) -> tuple[str, ...]:
    parts = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if len(parts) > 50 or any(not NAME_PATTERN.fullmatch(p) or len(p) > 64 for p in parts):
        raise library_error("architectures must be a comma-separated list of names")
    return parts


def page_of(params: Mapping[str, Any], default_limit: int = 10) -> tuple[int, int]:
    """
    ``page`` (from 1) and ``limit`` (1–100) → (offset, limit).
    """
    limit = _integer(params, "limit", default_limit, 1, MAX_LIMIT)
    page = _integer(params, "page", 1, 1, 1_000_000)
    return (page - 1) * limit, limit


def search_query(viewer: User, params: Mapping[str, Any]) -> LibraryQuery:
    """
    ``GET /v1/libraries``'s parameters, checked (an unknown scope, sort or a bad page is a 400).
    """
    scopes = _scopes(_text(params, "scope", "all") or "all", "scope")
    if len(scopes) != 1:
        raise library_error("scope must be one of " + ", ".join(SCOPES))
    sort = _text(params, "sort", "-popularity") or "-popularity"
    descending = sort.startswith("-")
    sort = sort.removeprefix("-")
    if sort not in SORTS:
        raise library_error(f"sort must be one of {', '.join(SORTS)}, optionally prefixed with -")
    filter_text = _text(params, "filter")
    if len(filter_text) > MAX_FILTER:
        raise library_error(f"filter must be at most {MAX_FILTER} characters")
    if _text(params, "category"):
        raise library_error("category is not supported by this server: libraries have no categories here")
    offset, limit = page_of(params)
    return LibraryQuery(
        viewer_id=viewer.id,
        scope=scopes[0],
        exclude=_scopes(_text(params, "excludeScopes"), "excludeScopes"),
        filter=filter_text,
        architectures=_architectures(_text(params, "architectures")),
        sort=sort,
        descending=descending,
        offset=offset,
        limit=limit,
    )


def _version_scope(params: Mapping[str, Any]) -> str:
    scope = _text(params, "scope", "all") or "all"
    if scope not in ("all", "public", "private"):
        raise library_error("scope must be one of all, public, private")
    return scope


def _name_from_path(name: str) -> str:
    if not is_valid_text(name) or not NAME_PATTERN.fullmatch(name) or len(name) > 64:
        raise not_found(name if is_valid_text(name) else "?")
    return name


class LibraryService:
    def __init__(
        self, *, store: Store, clock: Clock, storage: ArchiveStorage, policy: LibraryPolicy | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        self.storage = storage
        self.policy = policy or LibraryPolicy()
        self._reading = asyncio.Semaphore(self.policy.concurrent_reads)

    @property
    def max_upload(self) -> int:
        return self.policy.limits.max_archive

    # -------------------------------------------------------------------------------- reading

    async def search(self, viewer: User, params: Mapping[str, Any]) -> Sequence[LibraryView]:
        query = search_query(viewer, params)
        async with self.store.transaction(readonly=True) as tx:
            return await tx.libraries.search(query)

    async def get(self, viewer: User, name: str, params: Mapping[str, Any]) -> LibraryView:
        """
        One version (``version``, default the latest the caller may see) of a library.
        """
        scope = _version_scope(params)
        wanted = _text(params, "version") or "latest"
        if wanted != "latest":
            parse_version(wanted)
        async with self.store.transaction(readonly=True) as tx:
            library = await tx.libraries.get_by_name(name_key(_name_from_path(name)))
            if library is None:
                raise not_found(name)
            owner = library.owner_id == viewer.id
            if wanted == "latest":
                version = await tx.libraries.latest_version(library.id, visibility=_shown(owner, scope))
            else:
                version = await tx.libraries.get_version(library.id, wanted)
        if version is None or not _visible(version, owner=owner, scope=scope):
            raise not_found(name)
        return LibraryView(library=library, version=version)

    async def versions(self, viewer: User, name: str, params: Mapping[str, Any]) -> Sequence[LibraryView]:
        scope = _version_scope(params)
        offset, limit = page_of(params, default_limit=MAX_LIMIT)
        async with self.store.transaction(readonly=True) as tx:
            library = await tx.libraries.get_by_name(name_key(_name_from_path(name)))
            if library is None:
                raise not_found(name)
            owner = library.owner_id == viewer.id
            found = await tx.libraries.list_versions(
                library.id, visibility=_shown(owner, scope), offset=offset, limit=limit
            )
        shown = [LibraryView(library, v) for v in found if _visible(v, owner=owner, scope=scope)]
        if not shown and offset == 0:
            raise not_found(name)
        return shown

    async def download(self, download_key: str, file_name: str) -> tuple[LibraryVersion, bytes]:
        """
        The archive a download link names: the key must match, ``file_name`` be ``<name>-<version>.tar.gz``.
        """
        async with self.store.transaction(readonly=True) as tx:
            version = await tx.libraries.by_download_key(download_key)
        # The key is the capability (a random 128-bit lookup); the file name only has to agree with it.
        if version is None or file_name != f"{version.metadata.name}-{version.metadata.version}.tar.gz":
            raise not_found("archive")
        data = await self.storage.get(version.archive_key)
        if data is None:
            raise not_found(version.metadata.name)
        async with self.store.transaction() as tx:
            await tx.libraries.count_install(version.library_id)
        return version, data

    # -------------------------------------------------------------------------------- writing

    async def upload(self, owner: User, data: bytes, path_name: str | None = None) -> LibraryView:
        """
        Add a private version from a tar.gz upload. Nothing is stored unless every check passes.
        """
        async with self._reading:
            archive: LibraryArchive = await asyncio.to_thread(read_archive, data, self.policy.limits)
        metadata = archive.metadata
        if path_name is not None and name_key(path_name) != name_key(metadata.name):
            raise library_error(f"The archive is library {metadata.name}, not {path_name[:64]}")
        archive_key = secrets.token_hex(16)
        stored = False
        try:
            async with self.store.transaction() as tx:
                view = await self._add_version(tx, owner, archive, archive_key)
                # Written once every rule has passed, before the commit: a row never names a missing file.
                stored = True
                await self.storage.put(archive_key, archive.archive)
        except BaseException:
            if stored:
                await self.storage.delete(archive_key)
            raise
        return view

    async def _add_version(
        self, tx: UnitOfWork, owner: User, archive: LibraryArchive, archive_key: str
    ) -> LibraryView:
        metadata = archive.metadata
        now = self.clock.now()
        key = name_key(check_name(metadata.name))
        library = await tx.libraries.get_by_name(key)
        if library is None:
            try:
                library = await tx.libraries.add(metadata.name, key, owner_id=owner.id, now=now)
            except Conflict as exc:  # the same name, uploaded at the same moment by someone else
                raise library_error(exc.description) from exc
        elif library.owner_id != owner.id:
            description = f"You are not an owner of library {library.name}"
            raise PermissionDenied(description, code="forbidden", errors=[{"message": description}])
        latest = await tx.libraries.latest_version(library.id)
        if latest is not None and metadata.version_key <= latest.metadata.version_key:
            raise library_error(
                f"This version is not valid. Version must be greater than {latest.metadata.version}"
            )
        try:
            version = await tx.libraries.add_version(
                library.id,
                metadata,
                archive_key=archive_key,
                download_key=secrets.token_hex(16),
                size=len(archive.archive),
                sha256=archive.sha256,
                now=now,
            )
        except Conflict as exc:
            raise library_error(exc.description) from exc
        return LibraryView(library=library, version=version)

    async def publish(self, owner: User, name: str, params: Mapping[str, Any]) -> LibraryView:
        """
        ``PATCH visibility=public``: the latest private version becomes public (already public: unchanged).
        """
        visibility = _text(params, "visibility")
        if visibility != Visibility.PUBLIC.value:
            raise library_error("visibility must be public: a published version cannot be made private again")
        async with self.store.transaction() as tx:
            library = await self._owned(tx, owner, name)
            latest = await tx.libraries.latest_version(library.id)
            if latest is None:
                raise not_found(name)
            if latest.visibility is Visibility.PUBLIC:
                return LibraryView(library=library, version=latest)
            await tx.libraries.publish(latest.id, library.id, now=self.clock.now())
            published = await tx.libraries.get_version(library.id, latest.metadata.version)
            refreshed = await tx.libraries.get_by_name(name_key(library.name))
        if published is None or refreshed is None:  # deleted meanwhile: cannot happen inside the transaction
            raise not_found(name)
        return LibraryView(library=refreshed, version=published)

    async def delete(self, owner: User, name: str, params: Mapping[str, Any]) -> None:
        """
        Delete a private library with all its versions. Public libraries stay: others may depend on them.
        """
        if _text(params, "force"):
            raise library_error("force is not supported by this server: public libraries cannot be deleted")
        async with self.store.transaction() as tx:
            library = await self._owned(tx, owner, name)
            if await tx.libraries.latest_version(library.id, visibility=Visibility.PUBLIC) is not None:
                raise library_error(
                    f"Library {library.name} is public and cannot be deleted: others may depend on it"
                )
            archive_keys = await tx.libraries.delete(library.id)
        for key in archive_keys:
            await self.storage.delete(key)

    async def mark(self, name: str, *, official: bool | None = None, verified: bool | None = None) -> Library:
        """
        An operator's call (no owner check): mark a library official and/or verified, or not.
        """
        flags = {k: v for k, v in (("official", official), ("verified", verified)) if v is not None}
        async with self.store.transaction() as tx:
            library = await tx.libraries.get_by_name(name_key(_name_from_path(name)))
            if library is None:
                raise not_found(name)
            if flags:
                await tx.libraries.set_flags(library.id, **flags)
            marked = await tx.libraries.get_by_name(name_key(library.name))
        if marked is None:
            raise not_found(name)
        return marked

    async def _owned(self, tx: UnitOfWork, owner: User, name: str) -> Library:
        library = await tx.libraries.get_by_name(name_key(_name_from_path(name)))
        if library is None:
            raise not_found(name)
        if library.owner_id != owner.id:
            if await tx.libraries.latest_version(library.id, visibility=Visibility.PUBLIC) is None:
                raise not_found(name)  # someone else's private library is as absent as a missing one
            description = f"You are not an owner of library {library.name}"
            raise PermissionDenied(description, code="forbidden", errors=[{"message": description}])
        return library


def _shown(owner: bool, scope: str) -> Visibility | None:
    """
    Which versions a caller may pick from: others only public ones; the owner what the scope asks.
    """
    if not owner or scope == "public":
        return Visibility.PUBLIC
    return Visibility.PRIVATE if scope == "private" else None


def _visible(version: LibraryVersion, *, owner: bool, scope: str) -> bool:
    if scope == "public" and version.visibility is not Visibility.PUBLIC:
        return False
    if scope == "private" and version.visibility is not Visibility.PRIVATE:
        return False
    return owner or version.visibility is Visibility.PUBLIC
