"""
Cloud compile through a command the operator configures (``DEVICECLOUD_COMPILE_COMMAND``).

Theory of operation:
    Each compile gets a fresh temporary directory: the uploaded files go into ``src/`` under their relative
    names (an absolute name keeps its last part; one that climbs out with ``..`` is refused), and the
    command is run once, without a shell, from its words with ``{sources}``, ``{output}``, ``{platform}``
    and ``{version}`` filled in (for example a script around a local Device OS toolchain, or ``docker run …
    particle/buildpack-…``). Exit 0 with a non-empty file at ``{output}`` is a binary; anything else — an
    error exit, no output, the ``compile_timeout`` passing (the process is killed) — is a compile error
    carrying the command's output (at most `MAX_OUTPUT` bytes). The directory is removed afterwards. A
    concrete backend: only `runtime` builds it; services see `services.ports.Compiler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import tempfile
from pathlib import Path, PurePosixPath

from devicecloud.domain.firmware import CompileResult, SourceFile

__all__ = ["MAX_OUTPUT", "CommandCompiler"]

MAX_OUTPUT = 64 * 1024


def _relative(name: str) -> PurePosixPath | None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute():  # a client that sent its own full path: keep the file's name only
        path = PurePosixPath(path.name)
    if ".." in path.parts or not path.parts:
        return None
    return path


def _fill(word: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        word = word.replace("{" + name + "}", value)
    return word


class CommandCompiler:
    """`services.ports.Compiler` running ``command`` once per compile."""

    def __init__(self, command: str, *, timeout: float) -> None:
        self._words = shlex.split(command)
        if not self._words:
            raise ValueError("the compile command is empty")
        self._timeout = timeout

    async def compile(
        self, sources: list[SourceFile], platform_id: int, version: str | None
    ) -> CompileResult:
        with tempfile.TemporaryDirectory(prefix="devicecloud-compile-") as work:
            root = Path(work)
            source_dir, output = root / "src", root / "firmware.bin"
            source_dir.mkdir()
            for source in sources:
                relative = _relative(source.name)
                if relative is None:
                    return CompileResult(None, "", (f"Invalid file name: {source.name}",))
                target = source_dir / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(source.data)
            values = {
                "sources": str(source_dir),
                "output": str(output),
                "platform": str(platform_id),
                "version": version or "latest",
            }
            argv = [_fill(word, values) for word in self._words]
            text, code = await self._run(argv, root)
            if code == 0 and output.is_file() and output.stat().st_size > 0:
                return CompileResult(output.read_bytes(), text)
            reason = "the compiler timed out" if code is None else f"the compiler exited with status {code}"
            lines = [line for line in text.splitlines() if line.strip()]
            return CompileResult(None, text, tuple(lines[-20:]) or (reason,))

    async def _run(self, argv: list[str], cwd: Path) -> tuple[str, int | None]:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            return f"the compile command could not be started: {exc}", -1
        try:
            async with asyncio.timeout(self._timeout):
                out, _ = await process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return "", None
        return out[-MAX_OUTPUT:].decode("utf-8", "replace"), process.returncode
