"""
SQL repository of firmware libraries and their versions.

Which version a caller sees is decided here in one join: the owner sees the library's latest version, everyone
else its latest public one (`libraries.latest_version_id` / `latest_public_version_id`, recomputed in the
same transaction as every change to the versions). A library nobody may see joins to nothing, so lists,
counts and pages never include it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    delete,
    false,
    insert,
    literal,
    not_,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from devicecloud.domain.libraries import (
    Library,
    LibraryMetadata,
    LibraryQuery,
    LibraryVersion,
    LibraryView,
    Visibility,
)
from devicecloud.errors import Conflict
from devicecloud.store.tables import libraries, library_versions

PUBLIC_SCOPES = frozenset({"public", "official", "verified"})


def _library(row: Row[Any]) -> Library:
    return Library(
        id=row.id,
        name=row.name,
        owner_id=row.owner_id,
        official=row.official,
        verified=row.verified,
        installs=row.installs,
        created_at=row.created_at,
        published_at=row.published_at,
    )


def _version(row: Row[Any]) -> LibraryVersion:
    return LibraryVersion(
        id=row.id,
        library_id=row.library_id,
        metadata=LibraryMetadata.from_json(row.name, row.version, dict(row.details)),
        visibility=Visibility(row.visibility),
        archive_key=row.archive_key,
        download_key=row.download_key,
        size=row.size,
        sha256=row.sha256,
        uploaded_at=row.uploaded_at,
        published_at=row.published_at,
    )


VERSION_COLUMNS = (
    library_versions.c.id,
    library_versions.c.library_id,
    libraries.c.name,
    library_versions.c.version,
    library_versions.c.visibility,
    library_versions.c.details,
    library_versions.c.archive_key,
    library_versions.c.download_key,
    library_versions.c.size,
    library_versions.c.sha256,
    library_versions.c.uploaded_at,
    library_versions.c.published_at,
)
LIBRARY_COLUMNS = tuple(
    column.label(f"lib_{column.name}")
    for column in (
        libraries.c.id,
        libraries.c.name,
        libraries.c.owner_id,
        libraries.c.official,
        libraries.c.verified,
        libraries.c.installs,
        libraries.c.created_at,
        libraries.c.published_at,
    )
)
NEWEST_FIRST = (
    library_versions.c.major.desc(),
    library_versions.c.minor.desc(),
    library_versions.c.patch.desc(),
)


def _view(row: Row[Any]) -> LibraryView:
    library = Library(
        id=row.lib_id,
        name=row.lib_name,
        owner_id=row.lib_owner_id,
        official=row.lib_official,
        verified=row.lib_verified,
        installs=row.lib_installs,
        created_at=row.lib_created_at,
        published_at=row.lib_published_at,
    )
    return LibraryView(library=library, version=_version(row))


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _scope(scope: str, viewer_id: int) -> ColumnElement[bool]:
    public = libraries.c.latest_public_version_id.is_not(None)
    predicates: dict[str, ColumnElement[bool]] = {
        "all": true(),
        "public": public,
        "official": and_(public, libraries.c.official.is_(True)),
        "verified": and_(public, libraries.c.verified.is_(True)),
        "mine": libraries.c.owner_id == viewer_id,
        "private": and_(libraries.c.owner_id == viewer_id, not_(public)),
    }
    return predicates.get(scope, false())


SORT_COLUMNS: dict[str, Any] = {
    "name": libraries.c.name_key,
    "installs": libraries.c.installs,
    "popularity": libraries.c.installs,
    "published": libraries.c.published_at,
    "updated": library_versions.c.uploaded_at,
    "created": libraries.c.created_at,
    "official": libraries.c.official,
    "verified": libraries.c.verified,
}


class SqlLibraries:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def get_by_name(self, key: str) -> Library | None:
        row = (await self._conn.execute(select(libraries).where(libraries.c.name_key == key))).first()
        return _library(row) if row else None

    async def add(self, name: str, key: str, *, owner_id: int, now: datetime) -> Library:
        values = {
            "name": name,
            "name_key": key,
            "owner_id": owner_id,
            "official": False,
            "verified": False,
            "installs": 0,
            "created_at": now,
        }
        try:
            async with self._conn.begin_nested():
                result = await self._conn.execute(insert(libraries).values(**values).returning(*libraries.c))
        except IntegrityError as exc:
            raise Conflict("This library name is already taken") from exc
        return _library(result.one())

    def _versions(self) -> Any:
        return select(*VERSION_COLUMNS).join_from(
            library_versions, libraries, libraries.c.id == library_versions.c.library_id
        )

    async def latest_version(
        self, library_id: int, *, visibility: Visibility | None = None
    ) -> LibraryVersion | None:
        query = self._versions().where(library_versions.c.library_id == library_id)
        if visibility is not None:
            query = query.where(library_versions.c.visibility == visibility.value)
        row = (await self._conn.execute(query.order_by(*NEWEST_FIRST).limit(1))).first()
        return _version(row) if row else None

    async def get_version(self, library_id: int, version: str) -> LibraryVersion | None:
        query = self._versions().where(
            library_versions.c.library_id == library_id, library_versions.c.version == version
        )
        row = (await self._conn.execute(query)).first()
        return _version(row) if row else None

    async def list_versions(
        self, library_id: int, *, visibility: Visibility | None, offset: int, limit: int
    ) -> Sequence[LibraryVersion]:
        query = self._versions().where(library_versions.c.library_id == library_id)
        if visibility is not None:
            query = query.where(library_versions.c.visibility == visibility.value)
        order = (library_versions.c.major, library_versions.c.minor, library_versions.c.patch)
        rows = (await self._conn.execute(query.order_by(*order).offset(offset).limit(limit))).all()
        return [_version(row) for row in rows]

    async def add_version(
        self,
        library_id: int,
        metadata: LibraryMetadata,
        *,
        archive_key: str,
        download_key: str,
        size: int,
        sha256: str,
        now: datetime,
    ) -> LibraryVersion:
        major, minor, patch = metadata.version_key
        values = {
            "library_id": library_id,
            "version": metadata.version,
            "major": major,
            "minor": minor,
            "patch": patch,
            "visibility": Visibility.PRIVATE.value,
            "details": metadata.to_json(),
            "architectures": "".join(f",{a}" for a in metadata.architectures)
            + ("," if metadata.architectures else ""),
            "archive_key": archive_key,
            "download_key": download_key,
            "size": size,
            "sha256": sha256,
            "uploaded_at": now,
        }
        try:
            async with self._conn.begin_nested():
                result = await self._conn.execute(
                    insert(library_versions).values(**values).returning(library_versions.c.id)
                )
        except IntegrityError as exc:
            raise Conflict(f"Version {metadata.version} of this library exists already") from exc
        version_id = result.scalar_one()
        await self._refresh_pointers(library_id)
        version = await self.get_version(library_id, metadata.version)
        if version is None or version.id != version_id:
            msg = "the version just added cannot be read back"
            raise RuntimeError(msg)
        return version

    async def publish(self, version_id: int, library_id: int, *, now: datetime) -> None:
        await self._conn.execute(
            update(library_versions)
            .where(library_versions.c.id == version_id)
            .values(visibility=Visibility.PUBLIC.value, published_at=now)
        )
        await self._conn.execute(
            update(libraries)
            .where(libraries.c.id == library_id, libraries.c.published_at.is_(None))
            .values(published_at=now)
        )
        await self._refresh_pointers(library_id)

    async def delete(self, library_id: int) -> list[str]:
        """
        Remove the library and every version; returns the archive keys to remove from storage.
        """
        result = await self._conn.execute(
            select(library_versions.c.archive_key).where(library_versions.c.library_id == library_id)
        )
        archive_keys: list[str] = list(result.scalars())
        await self._conn.execute(delete(library_versions).where(library_versions.c.library_id == library_id))
        await self._conn.execute(delete(libraries).where(libraries.c.id == library_id))
        return archive_keys

    async def by_download_key(self, download_key: str) -> LibraryVersion | None:
        query = self._versions().where(library_versions.c.download_key == download_key)
        row = (await self._conn.execute(query)).first()
        return _version(row) if row else None

    async def set_flags(self, library_id: int, **flags: bool) -> None:
        """
        Set ``official`` and/or ``verified``.
        """
        await self._conn.execute(update(libraries).where(libraries.c.id == library_id).values(**flags))

    async def count_install(self, library_id: int) -> None:
        await self._conn.execute(
            update(libraries).where(libraries.c.id == library_id).values(installs=libraries.c.installs + 1)
        )

    async def search(self, query: LibraryQuery) -> Sequence[LibraryView]:
        """
        One page of the libraries ``query.viewer_id`` may see, each with the version shown to them.
        """
        public_view = query.scope in PUBLIC_SCOPES
        shown = (
            libraries.c.latest_public_version_id
            if public_view
            else case(
                (libraries.c.owner_id == literal(query.viewer_id), libraries.c.latest_version_id),
                else_=libraries.c.latest_public_version_id,
            )
        )
        statement = (
            select(*LIBRARY_COLUMNS, *VERSION_COLUMNS)
            .join_from(libraries, library_versions, library_versions.c.id == shown)
            .where(_scope(query.scope, query.viewer_id))
        )
        for excluded in query.exclude:
            statement = statement.where(not_(_scope(excluded, query.viewer_id)))
        if query.filter:
            statement = statement.where(libraries.c.name_key.like(_like(query.filter.lower()), escape="\\"))
        if query.architectures:
            statement = statement.where(
                or_(
                    library_versions.c.architectures == "",
                    *(
                        library_versions.c.architectures.like(_like(f",{a},"), escape="\\")
                        for a in query.architectures
                    ),
                )
            )
        column = SORT_COLUMNS[query.sort]
        ordering = column.desc().nulls_last() if query.descending else column.asc().nulls_last()
        statement = statement.order_by(ordering, libraries.c.name_key, libraries.c.id)
        rows = (await self._conn.execute(statement.offset(query.offset).limit(query.limit))).all()
        return [_view(row) for row in rows]

    async def _refresh_pointers(self, library_id: int) -> None:
        def newest(public_only: bool) -> Any:
            query = select(library_versions.c.id).where(library_versions.c.library_id == library_id)
            if public_only:
                query = query.where(library_versions.c.visibility == Visibility.PUBLIC.value)
            return query.order_by(*NEWEST_FIRST).limit(1).scalar_subquery()

        await self._conn.execute(
            update(libraries)
            .where(libraries.c.id == library_id)
            .values(latest_version_id=newest(False), latest_public_version_id=newest(True))
        )
