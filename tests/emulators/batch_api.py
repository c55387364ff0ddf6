"""Files and batch jobs APIs of OpenAI (``/v1``), Azure OpenAI (``/openai``, api-version and
``api-key``) and Mistral (``/mistral/v1``, ``/batch/jobs``), in one app with one store.

Shapes are checked strictly (an unexpected field or value is a 400, as upstream answers). A
job never moves on its own: the test moves it (``start``, ``complete``, ``finish_cancel``,
``expire``), so status transitions happen exactly when the test says, never by sleeping.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.emulators.common import EmulatorBase, fault_response, json_response
from tests.emulators.openai_api import API_KEY, completion

AZURE_KEY = "azure-batch-key"
MISTRAL_KEY = "mistral-batch-key"
MISTRAL_STATUS = {
    "validating": "QUEUED",
    "in_progress": "RUNNING",
    "completed": "SUCCESS",
    "failed": "FAILED",
    "expired": "TIMEOUT_EXCEEDED",
    "cancelling": "CANCELLATION_REQUESTED",
    "cancelled": "CANCELLED",
}
_ids = itertools.count(1)


def _error(status: int, message: str) -> Response:
    return json_response(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
        status,
    )


@dataclass
class Job:
    id: str
    dialect: str  # openai, azure, mistral
    input_file: str
    endpoint: str
    model: str | None
    metadata: dict[str, str] | None
    status: str = "validating"
    created_at: int = field(default_factory=lambda: int(time.time()))
    output_file: str | None = None
    error_file: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchEmulator(EmulatorBase):
    """Keeps uploaded files and jobs; the test drives each job's life."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, tuple[str, str, bytes]] = {}  # id → (filename, purpose, content)
        self.jobs: dict[str, Job] = {}
        routes = []
        for dialect, root, batches in (
            ("openai", "/v1", "/v1/batches"),
            ("azure", "/openai", "/openai/batches"),
            ("azure", "/openai/v1", "/openai/v1/batches"),
            ("mistral", "/mistral/v1", "/mistral/v1/batch/jobs"),
        ):
            routes += [
                Route(f"{root}/files", self._upload(dialect), methods=["POST"]),
                Route(f"{root}/files/{{fid}}/content", self._content(dialect), methods=["GET"]),
                Route(batches, self._create(dialect), methods=["POST"]),
                Route(f"{batches}/{{bid}}", self._get(dialect), methods=["GET"]),
                Route(f"{batches}/{{bid}}/cancel", self._cancel(dialect), methods=["POST"]),
            ]
        self.app = Starlette(routes=routes)

    def reset(self) -> None:
        super().reset()
        self.files.clear()
        self.jobs.clear()

    # -- what the test does -------------------------------------------------------------
    def only_job(self) -> Job:
        assert len(self.jobs) == 1, self.jobs
        return next(iter(self.jobs.values()))

    def lines(self, job: Job) -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in self.files[job.input_file][2].splitlines() if x]

    def start(self, job: Job) -> None:
        job.status = "in_progress"

    def complete(
        self,
        job: Job,
        fail: frozenset[str] = frozenset(),
        done: int | None = None,
        status: str = "completed",
    ) -> None:
        """Run the first ``done`` lines (all by default), failing those in ``fail``; write
        the output and error files and end the job in ``status``."""
        outputs, errors = [], []
        for line in self.lines(job)[:done]:
            body = dict(line["body"])
            model = job.model if job.dialect == "mistral" else body["model"]
            if line["custom_id"] in fail:
                errors.append(
                    {
                        "id": f"batch_req_{next(_ids)}",
                        "custom_id": line["custom_id"],
                        "response": {
                            "status_code": 400,
                            "request_id": f"req_{next(_ids)}",
                            "body": {"error": {"message": "bad line", "code": "invalid_value"}},
                        },
                        "error": None,
                    }
                )
                continue
            answer = completion({**body, "model": model}, f"{model}-2024-07-18")
            outputs.append(
                {
                    "id": f"batch_req_{next(_ids)}",
                    "custom_id": line["custom_id"],
                    "response": {
                        "status_code": 200,
                        "request_id": f"req_{next(_ids)}",
                        "body": answer,
                    },
                    "error": None,
                }
            )
        if outputs:
            job.output_file = self._store("output.jsonl", "batch_output", outputs)
        if errors:
            job.error_file = self._store("errors.jsonl", "batch_output", errors)
        job.completed, job.failed = len(outputs), len(errors)
        job.status = status

    def finish_cancel(self, job: Job, done: int) -> None:
        self.complete(job, done=done, status="cancelled")

    def _store(self, name: str, purpose: str, lines: list[dict[str, Any]]) -> str:
        fid = self._file_id()
        self.files[fid] = (name, purpose, b"".join(orjson.dumps(x) + b"\n" for x in lines))
        return fid

    def _file_id(self) -> str:
        return f"file-{next(_ids):06d}"

    # -- the APIs ------------------------------------------------------------------------
    def _denied(self, dialect: str, request: Request) -> Response | None:
        if dialect == "azure":
            if request.headers.get("api-key") != AZURE_KEY:
                return _error(401, "Access denied due to invalid subscription key.")
            if request.url.path.startswith("/openai/v1"):
                return None
            if not request.query_params.get("api-version"):
                return _error(404, "Resource not found")
            return None
        key = MISTRAL_KEY if dialect == "mistral" else API_KEY
        if request.headers.get("authorization") != f"Bearer {key}":
            return _error(401, "Incorrect API key provided.")
        return None

    def _upload(self, dialect: str) -> Any:
        async def upload(request: Request) -> Response:
            self.requests.append(await self._recorded(request))
            if (denied := self._denied(dialect, request)) is not None:
                return denied
            form = await request.form()
            file = form.get("file")
            if set(form.keys()) != {"file", "purpose"} or not isinstance(file, UploadFile):
                return _error(400, f"expected fields file and purpose, got {sorted(form.keys())}")
            if form.get("purpose") != "batch":
                return _error(400, f"purpose must be batch, not {form.get('purpose')!r}")
            content = await file.read()
            for raw in content.splitlines():
                problem = self._bad_line(dialect, orjson.loads(raw))
                if problem:
                    return _error(400, f"invalid line: {problem}")
            fid = self._file_id()
            self.files[fid] = (file.filename or "", "batch", content)
            if dialect == "mistral":
                return json_response(
                    {
                        "id": fid,
                        "object": "file",
                        "size_bytes": len(content),
                        "created_at": int(time.time()),
                        "filename": file.filename,
                        "purpose": "batch",
                        "sample_type": "batch_request",
                        "source": "upload",
                    }
                )
            return json_response(
                {
                    "id": fid,
                    "object": "file",
                    "bytes": len(content),
                    "created_at": int(time.time()),
                    "filename": file.filename,
                    "purpose": "batch",
                    "status": "processed",
                }
            )

        return upload

    @staticmethod
    def _bad_line(dialect: str, line: Any) -> str | None:
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            return "no custom_id"
        if dialect == "mistral":
            if set(line) != {"custom_id", "body"} or "model" in line["body"]:
                return f"mistral lines carry custom_id and body only: {sorted(line)}"
            return None
        url = "/chat/completions" if dialect == "azure" else "/v1/chat/completions"
        if set(line) != {"custom_id", "method", "url", "body"}:
            return f"fields {sorted(line)}"
        if line["method"] != "POST" or line["url"] != url or not line["body"].get("model"):
            return f"method/url/model: {line['method']} {line['url']} {line['body'].get('model')}"
        return None

    def _content(self, dialect: str) -> Any:
        async def content(request: Request) -> Response:
            self.requests.append(await self._recorded(request))
            if (denied := self._denied(dialect, request)) is not None:
                return denied
            found = self.files.get(request.path_params["fid"])
            if found is None:
                return _error(404, "No such file")
            return Response(found[2], media_type="application/octet-stream")

        return content

    def _create(self, dialect: str) -> Any:
        async def create(request: Request) -> Response:
            rec = await self._recorded(request)
            self.requests.append(rec)
            if (denied := self._denied(dialect, request)) is not None:
                return denied
            if (fault := await self.take_fault()) is not None:
                return fault_response(fault)
            body = rec.body
            if dialect == "mistral":
                if not set(body) <= {"input_files", "endpoint", "model", "metadata"}:
                    return _error(422, f"unexpected fields {sorted(body)}")
                files = body.get("input_files") or []
                if body.get("endpoint") != "/v1/chat/completions" or not body.get("model"):
                    return _error(422, "endpoint and model are required")
                fid, model = files[0] if files else None, body["model"]
            else:
                want = "/chat/completions" if dialect == "azure" else "/v1/chat/completions"
                if not set(body) <= {"input_file_id", "endpoint", "completion_window", "metadata"}:
                    return _error(400, f"unexpected fields {sorted(body)}")
                if body.get("endpoint") != want or body.get("completion_window") != "24h":
                    return _error(400, f"endpoint must be {want}, completion_window 24h")
                fid, model = body.get("input_file_id"), None
            if fid not in self.files:
                return _error(404, f"no input file {fid}")
            job = Job(
                f"batch_{next(_ids):06d}",
                dialect,
                fid,
                body["endpoint"],
                model,
                body.get("metadata"),
            )
            job.total = len(self.files[fid][2].splitlines())
            self.jobs[job.id] = job
            return self._answer(job)

        return create

    def _get(self, dialect: str) -> Any:
        async def get(request: Request) -> Response:
            self.requests.append(await self._recorded(request))
            if (denied := self._denied(dialect, request)) is not None:
                return denied
            if (fault := await self.take_fault()) is not None:
                return fault_response(fault)
            job = self.jobs.get(request.path_params["bid"])
            return _error(404, "No such batch") if job is None else self._answer(job)

        return get

    def _cancel(self, dialect: str) -> Any:
        async def cancel(request: Request) -> Response:
            self.requests.append(await self._recorded(request))
            if (denied := self._denied(dialect, request)) is not None:
                return denied
            job = self.jobs.get(request.path_params["bid"])
            if job is None:
                return _error(404, "No such batch")
            job.status = "cancelling"
            return self._answer(job)

        return cancel

    async def _recorded(self, request: Request) -> Any:
        from tests.emulators.common import Recorded

        raw = await request.body()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = raw
        return Recorded(
            request.method,
            request.url.path,
            dict(request.query_params),
            {k.lower(): v for k, v in request.headers.items()},
            body,
        )

    def _answer(self, job: Job) -> Response:
        if job.dialect == "mistral":
            return json_response(
                {
                    "id": job.id,
                    "object": "batch",
                    "input_files": [job.input_file],
                    "metadata": job.metadata,
                    "endpoint": job.endpoint,
                    "model": job.model,
                    "output_file": job.output_file,
                    "error_file": job.error_file,
                    "errors": [],
                    "status": MISTRAL_STATUS[job.status],
                    "created_at": job.created_at,
                    "total_requests": job.total,
                    "completed_requests": job.completed + job.failed,
                    "succeeded_requests": job.completed,
                    "failed_requests": job.failed,
                    "started_at": job.created_at,
                    "completed_at": None,
                }
            )
        return json_response(
            {
                "id": job.id,
                "object": "batch",
                "endpoint": job.endpoint,
                "errors": None,
                "input_file_id": job.input_file,
                "completion_window": "24h",
                "status": job.status,
                "output_file_id": job.output_file,
                "error_file_id": job.error_file,
                "created_at": job.created_at,
                "in_progress_at": None,
                "expires_at": job.created_at + 86400,
                "finalizing_at": None,
                "completed_at": None,
                "failed_at": None,
                "expired_at": None,
                "cancelling_at": None,
                "cancelled_at": None,
                "request_counts": {
                    "total": job.total,
                    "completed": job.completed,
                    "failed": job.failed,
                },
                "metadata": job.metadata,
            }
        )
