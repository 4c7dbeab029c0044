"""Batch error answers of the local API: the code table, the error body, and SpecError mapping.

Every failed request ends here. A route raises ``BatchApiError("JobNotFound")`` (or one of the
helpers); the application's handler (``agent.api.app``) renders it as the service does
(batch-api-routes.md §7.1)::

    {"odata.metadata": "<base>/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element",
     "code": "JobNotFound",
     "message": {"lang": "en-US", "value": "The specified job does not exist.\\nRequestId:<uuid>\\nTime:<rfc3339>"},
     "values": [{"key": "Reason", "value": "..."}]}

``message`` stays an object: azure-batch 15.x's ``BatchErrorFormat`` reads ``message.value`` and
turns each ``values`` item into an error detail; az prints ``ERROR: (CODE) message.value``.

The HTTP status of each code comes from one table (``CODES``, from the "Batch Status and Error
Codes" page). Two rows are this project's decisions, not the service's: ``FeatureNotSupported``
(501) for what a single node cannot serve (pools, nodes, schedules; the service has no generic
code for it), and ``InternalError`` (500, the documented code) for an unexpected exception,
whose body never carries a traceback.

``BatchApiError`` is defined here, not in ``agent.errors``: it is an HTTP answer, not a fault of
the agent, and only the API raises it. It derives from ``AgentError`` so the tree stays one.

Values echoed to a client never include a request's property values (they may be secrets):
only names, JSON paths and reasons.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.errors import AgentError, Issue, SpecError
from agent.status import format_time, utcnow

ERROR_METADATA = "$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"
JSON_CONTENT_TYPE = "application/json;odata=minimalmetadata"


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    status: int
    message: str


def _table(*rows: tuple[str, int, str]) -> dict[str, ErrorCode]:
    return {code: ErrorCode(code, status, message) for code, status, message in rows}


CODES: dict[str, ErrorCode] = _table(
    # request shape
    ("MissingRequiredHeader", 400, "An HTTP header that's mandatory for this request is not specified."),
    ("InvalidHeaderValue", 400, "The value provided for one of the HTTP headers was not in the correct format."),
    ("MissingRequiredQueryParameter", 400, "A query parameter that's mandatory for this request is not specified."),
    ("UnsupportedQueryParameter", 400, "One of the query parameters specified in the request URI is not supported."),
    ("InvalidQueryParameterValue", 400,
     "Value for one of the query parameters specified in the request URI is invalid."),
    ("OutOfRangeQueryParameterValue", 400,
     "A query parameter specified in the request URI is outside the permissible range."),
    ("InvalidUri", 400, "The requested URI does not represent any resource on the server."),
    ("UnsupportedHttpVerb", 405, "The resource doesn't support the specified HTTP verb."),
    ("MissingContentLengthHeader", 411, "The Content-Length header was not specified."),
    ("MultipleConditionHeadersNotSupported", 400, "Multiple condition headers are not supported."),
    ("ConditionNotMet", 412, "The condition specified using HTTP conditional header(s) is not met."),
    # body
    ("InvalidRequestBody", 400, "The specified request body is not syntactically valid."),
    ("MissingRequiredProperty", 400, "A property that's mandatory for this request is not specified."),
    ("InvalidPropertyValue", 400, "The value provided for one of the properties in the request body is invalid."),
    ("UnsupportedProperty", 400, "One of the properties specified in the request body is not supported."),
    ("RequestBodyTooLarge", 413, "The request body is too large and exceeds the maximum permissible limit."),
    ("TaskDependenciesNotSpecifiedOnJob", 400,
     "The task has dependencies but the job does not use task dependencies."),
    ("TaskDependencyListTooLong", 400, "The task dependency list is too long."),
    ("TaskDependencyRangesTooLong", 400, "The task has too many dependency ranges."),
    # authentication
    ("InvalidAuthenticationInfo", 400, "The authentication information was not provided in the correct format."),
    ("AuthenticationFailed", 403, "Server failed to authenticate the request. Make sure the value of "
     "Authorization header is formed correctly including the signature."),
    ("InsufficientAccountPermissions", 403,
     "The account being accessed does not have sufficient permissions to execute this operation."),
    # resources
    ("ResourceNotFound", 404, "The specified resource does not exist."),
    ("JobNotFound", 404, "The specified job does not exist."),
    ("TaskNotFound", 404, "The specified task does not exist."),
    ("FileNotFound", 404, "The specified file does not exist."),
    ("JobExists", 409, "The specified job already exists."),
    ("TaskExists", 409, "The specified task already exists."),
    ("JobBeingDeleted", 409, "The specified job has been marked for deletion and is being garbage collected."),
    ("JobBeingTerminated", 409, "The specified job is being terminated."),
    ("JobCompleted", 409, "The specified job is already in a completed state."),
    ("JobDisabled", 409, "The specified job is disabled."),
    ("JobNotActive", 409, "The specified job is not in an active state."),
    ("TaskCompleted", 409, "The specified task is already completed."),
    ("TaskNotCompleted", 409, "The operation can be performed only on completed tasks."),
    ("TaskSucceeded", 409, "The operation cannot be performed on a task that succeeded."),
    ("TaskFilesUnavailable", 409, "The files of the specified task are not available."),
    ("TaskFilesCleanedup", 409, "The files of the specified task have been cleaned up."),
    ("OperationInvalidForCurrentState", 409, "The operation is not allowed in the current state of the resource."),
    ("JobPreparationTaskNotSpecified", 409, "The specified job does not have a job preparation task."),
    ("JobReleaseTaskNotSpecified", 409, "The specified job does not have a job release task."),
    ("TaskIdSameAsJobPreparationTask", 409, "The task id is the same as that of the job preparation task."),
    ("TaskIdSameAsJobReleaseTask", 409, "The task id is the same as that of the job release task."),
    ("InvalidRange", 416, "The range specified is invalid for the current size of the resource."),
    # this node
    ("FeatureNotSupported", 501, "This operation is not supported by a batch-agent node."),
    ("InternalError", 500, "The server encountered an internal error. Please retry the request."),
    ("OperationTimedOut", 500, "The operation could not be completed within the permitted time."),
    ("ServerBusy", 503, "The server is currently unable to receive requests. Please retry your request."),
)


class BatchApiError(AgentError):
    """An answer in Batch's error shape: a code from ``CODES``, a message, key/value details."""

    def __init__(self, code: str, message: str | None = None, *, values: Iterable[tuple[str, str]] = (),
                 status: int | None = None, headers: dict[str, str] | None = None) -> None:
        entry = CODES[code]  # a KeyError here is a programming error: every code is in the table
        self.code = code
        self.status = status or entry.status
        self.message = message or entry.message
        self.values = tuple(values)
        self.headers = dict(headers or {})
        super().__init__(f"{code}: {self.message}")

    def body(self, *, base_url: str, request_id: str) -> dict[str, object]:
        text = f"{self.message}\nRequestId:{request_id}\nTime:{format_time(utcnow())}"
        out: dict[str, object] = {"odata.metadata": f"{base_url.rstrip('/')}/{ERROR_METADATA}", "code": self.code,
                                  "message": {"lang": "en-US", "value": text}}
        if self.values:
            out["values"] = [{"key": k, "value": v} for k, v in self.values]
        return out

    def render(self, *, base_url: str, request_id: str) -> bytes:
        return json.dumps(self.body(base_url=base_url, request_id=request_id)).encode()


# --- helpers routes use -----------------------------------------------------------------------

def query_error(name: str, value: str, reason: str, *, code: str = "InvalidQueryParameterValue") -> BatchApiError:
    """A bad query parameter: the service's ``QueryParameterName`` / ``QueryParameterValue`` / ``Reason``."""
    return BatchApiError(code, values=(("QueryParameterName", name), ("QueryParameterValue", value[:256]),
                                       ("Reason", reason)))


def body_error(code: str, reason: str, *, path: str = "") -> BatchApiError:
    values = ((("PropertyName", path),) if path else ()) + (("Reason", reason),)
    return BatchApiError(code, values=values)


def _issue_code(issue: Issue) -> str:
    # agent.spec.load words its issues this way; a kind on Issue would be sturdier (see the report).
    if not issue.path:
        return "InvalidRequestBody"
    if issue.message.startswith("required field is missing") or issue.message.endswith("(this field is required)"):
        return "MissingRequiredProperty"
    if issue.message.startswith("unknown field"):
        return "UnsupportedProperty"
    return "InvalidPropertyValue"


def from_spec_error(exc: SpecError) -> BatchApiError:
    """A body that ``agent.spec`` refused, as a 400 with the same text ``batch-agent validate`` prints.

    The code is the first issue's (``MissingRequiredProperty``, ``UnsupportedProperty``,
    ``InvalidPropertyValue``; ``InvalidRequestBody`` for a body that is no JSON object); every
    issue appears in ``values`` as ``PropertyName`` (its JSON path) and ``Reason``.
    """
    issues: Sequence[Issue] = exc.issues or [Issue("", "the request body is not valid")]
    message = SpecError(list(issues)).render()  # no source prefix: the body is the source
    values: list[tuple[str, str]] = []
    for issue in issues:
        if issue.path:
            values.append(("PropertyName", issue.path))
        values.append(("Reason", issue.message))
    return BatchApiError(_issue_code(issues[0]), message, values=values)
