"""``client.files`` and ``client.batches``, written once for the four clients: OpenAI's Files
and Batches API, run in-process (the engine's batch service, as the master key) or sent to a
running gateway. A resource hands a ``BatchCall`` to its client's backend and reads the
answer into ``FileObject`` / ``Batch`` (OpenAI's shapes; see docs/batch.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")  # what ``timeout`` may be

# What ``files.create(file=…)`` takes, as the OpenAI SDK does: bytes, a path, an open binary
# file, or (filename, content).
FileInput = bytes | Path | IO[bytes] | tuple[str, bytes]


class FileObject(BaseModel):
    """A file, in OpenAI's shape."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str


class FileDeleted(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    object: str = "file"
    deleted: bool


class BatchRequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class Batch(BaseModel):
    """A batch job, in OpenAI's shape."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: str = "batch"
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: int
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: BatchRequestCounts | None = None
    metadata: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class BatchCall:
    """One Files or Batches operation: ``op`` is ``files.create``, ``files.list``,
    ``files.retrieve``, ``files.content``, ``files.delete``, ``batches.create``,
    ``batches.list``, ``batches.retrieve`` or ``batches.cancel``."""

    op: str
    args: dict[str, Any]
    timeout: Any = None


class BatchBackend(Protocol):
    """A backend's one entry for these resources: the answer's JSON (``files.content``:
    bytes), or an awaitable of it for an async backend."""

    def batch_api(self, call: BatchCall) -> Any: ...


def file_parts(file: FileInput) -> tuple[str, bytes]:
    """A file's name and content from what ``files.create`` was given."""
    if isinstance(file, tuple):
        return file[0], file[1]
    if isinstance(file, bytes):
        return "input.jsonl", file
    if isinstance(file, Path):
        return file.name, file.read_bytes()
    name = getattr(file, "name", None)
    return (Path(name).name if isinstance(name, str) else "input.jsonl"), file.read()


def _create(file: FileInput, purpose: str, timeout: Any) -> BatchCall:
    filename, content = file_parts(file)
    return BatchCall(
        "files.create", {"filename": filename, "content": content, "purpose": purpose}, timeout
    )


def _batch(
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, str] | None,
    timeout: Any,
) -> BatchCall:
    body: dict[str, Any] = {
        "input_file_id": input_file_id,
        "endpoint": endpoint,
        "completion_window": completion_window,
    }
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return BatchCall("batches.create", body, timeout)


# --- sync -----------------------------------------------------------------------------------


class Files(Generic[T]):
    """``client.files``."""

    def __init__(self, backend: BatchBackend) -> None:
        self._backend = backend

    def create(
        self, *, file: FileInput, purpose: str = "batch", timeout: T | None = None
    ) -> FileObject:
        return FileObject.model_validate(self._backend.batch_api(_create(file, purpose, timeout)))

    def list(self, *, timeout: T | None = None) -> list[FileObject]:
        answer = self._backend.batch_api(BatchCall("files.list", {}, timeout))
        return [FileObject.model_validate(f) for f in answer["data"]]

    def retrieve(self, file_id: str, *, timeout: T | None = None) -> FileObject:
        call = BatchCall("files.retrieve", {"file_id": file_id}, timeout)
        return FileObject.model_validate(self._backend.batch_api(call))

    def content(self, file_id: str, *, timeout: T | None = None) -> bytes:
        content: bytes = self._backend.batch_api(
            BatchCall("files.content", {"file_id": file_id}, timeout)
        )
        return content

    def delete(self, file_id: str, *, timeout: T | None = None) -> FileDeleted:
        call = BatchCall("files.delete", {"file_id": file_id}, timeout)
        return FileDeleted.model_validate(self._backend.batch_api(call))


class Batches(Generic[T]):
    """``client.batches``."""

    def __init__(self, backend: BatchBackend) -> None:
        self._backend = backend

    def create(
        self,
        *,
        input_file_id: str,
        endpoint: str = "/v1/chat/completions",
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        timeout: T | None = None,
    ) -> Batch:
        call = _batch(input_file_id, endpoint, completion_window, metadata, timeout)
        return Batch.model_validate(self._backend.batch_api(call))

    def list(self, *, limit: int = 20, timeout: T | None = None) -> list[Batch]:
        answer = self._backend.batch_api(BatchCall("batches.list", {"limit": limit}, timeout))
        return [Batch.model_validate(b) for b in answer["data"]]

    def retrieve(self, batch_id: str, *, timeout: T | None = None) -> Batch:
        call = BatchCall("batches.retrieve", {"batch_id": batch_id}, timeout)
        return Batch.model_validate(self._backend.batch_api(call))

    def cancel(self, batch_id: str, *, timeout: T | None = None) -> Batch:
        call = BatchCall("batches.cancel", {"batch_id": batch_id}, timeout)
        return Batch.model_validate(self._backend.batch_api(call))


# --- async ----------------------------------------------------------------------------------


class AsyncFiles(Generic[T]):
    """``client.files`` of the async clients."""

    def __init__(self, backend: BatchBackend) -> None:
        self._backend = backend

    async def create(
        self,
        *,
        file: FileInput,
        purpose: str = "batch",
        timeout: T | None = None,  # noqa: ASYNC109
    ) -> FileObject:
        answer = await self._backend.batch_api(_create(file, purpose, timeout))
        return FileObject.model_validate(answer)

    async def list(self, *, timeout: T | None = None) -> list[FileObject]:  # noqa: ASYNC109
        answer = await self._backend.batch_api(BatchCall("files.list", {}, timeout))
        return [FileObject.model_validate(f) for f in answer["data"]]

    async def retrieve(self, file_id: str, *, timeout: T | None = None) -> FileObject:  # noqa: ASYNC109
        call = BatchCall("files.retrieve", {"file_id": file_id}, timeout)
        return FileObject.model_validate(await self._backend.batch_api(call))

    async def content(self, file_id: str, *, timeout: T | None = None) -> bytes:  # noqa: ASYNC109
        call = BatchCall("files.content", {"file_id": file_id}, timeout)
        content: bytes = await self._backend.batch_api(call)
        return content

    async def delete(self, file_id: str, *, timeout: T | None = None) -> FileDeleted:  # noqa: ASYNC109
        call = BatchCall("files.delete", {"file_id": file_id}, timeout)
        return FileDeleted.model_validate(await self._backend.batch_api(call))


class AsyncBatches(Generic[T]):
    """``client.batches`` of the async clients."""

    def __init__(self, backend: BatchBackend) -> None:
        self._backend = backend

    async def create(
        self,
        *,
        input_file_id: str,
        endpoint: str = "/v1/chat/completions",
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        timeout: T | None = None,  # noqa: ASYNC109
    ) -> Batch:
        call = _batch(input_file_id, endpoint, completion_window, metadata, timeout)
        return Batch.model_validate(await self._backend.batch_api(call))

    async def list(self, *, limit: int = 20, timeout: T | None = None) -> list[Batch]:  # noqa: ASYNC109
        answer = await self._backend.batch_api(BatchCall("batches.list", {"limit": limit}, timeout))
        return [Batch.model_validate(b) for b in answer["data"]]

    async def retrieve(self, batch_id: str, *, timeout: T | None = None) -> Batch:  # noqa: ASYNC109
        call = BatchCall("batches.retrieve", {"batch_id": batch_id}, timeout)
        return Batch.model_validate(await self._backend.batch_api(call))

    async def cancel(self, batch_id: str, *, timeout: T | None = None) -> Batch:  # noqa: ASYNC109
        call = BatchCall("batches.cancel", {"batch_id": batch_id}, timeout)
        return Batch.model_validate(await self._backend.batch_api(call))


# --- how a remote backend sends them --------------------------------------------------------

# op → (method, path under /v1 with {names} from the args)
ROUTES = {
    "files.create": ("POST", "/files"),
    "files.list": ("GET", "/files"),
    "files.retrieve": ("GET", "/files/{file_id}"),
    "files.content": ("GET", "/files/{file_id}/content"),
    "files.delete": ("DELETE", "/files/{file_id}"),
    "batches.create": ("POST", "/batches"),
    "batches.list": ("GET", "/batches"),
    "batches.retrieve": ("GET", "/batches/{batch_id}"),
    "batches.cancel": ("POST", "/batches/{batch_id}/cancel"),
}
