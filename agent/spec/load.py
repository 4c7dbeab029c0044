"""Reading task / job documents and turning pydantic's errors into Batch-style messages.

Every problem comes back as one ``SpecError`` listing each issue with its JSON path
(``outputFiles[2].uploadOptions.uploadCondition``) and what is allowed. Nothing else escapes:
not a JSON decode error, not a pydantic error, not a traceback.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import ValidationError

from agent.errors import Issue, SpecError
from agent.spec.base import BatchModel, did_you_mean
from agent.spec.checks import SURROGATE
from agent.spec.job import JobSpec, TaskCollection
from agent.spec.task import TaskSpec

Kind = Literal["task", "job", "collection"]
_JOB_KEYS = {"poolInfo", "jobPreparationTask", "jobReleaseTask", "jobManagerTask", "onTaskFailure",
             "onAllTasksComplete", "commonEnvironmentSettings", "usesTaskDependencies", "taskFactory",
             "applicationTemplateInfo"}


@dataclass(frozen=True, slots=True)
class Document:
    kind: Kind
    model: TaskSpec | JobSpec | TaskCollection
    source: str

    @property
    def tasks(self) -> list[TaskSpec]:
        if isinstance(self.model, TaskSpec):
            return [self.model]
        if isinstance(self.model, TaskCollection):
            return list(self.model.value)
        return []


def read_json(path: Path | str) -> Any:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"no such file; check the path {source!r}", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read the file: {exc.__class__.__name__}: {exc}", source=source) from None
    return parse_json(text, source)


def parse_json(text: str, source: str = "<input>") -> Any:
    """``json.loads`` that refuses what JSON readers disagree on, naming the JSON path: a key given
    twice in one object (Python keeps the last, others the first: ``elevationLevel`` twice would
    decide who the task runs as), an integer too long for Python to convert, and numbers that
    are not finite (``NaN``, ``Infinity``, ``1e999``)."""
    strange: list[str] = []  # what was found; only its truth matters

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) == len(items):
            return out
        seen: set[str] = set()
        repeated = _Repeated(out)
        for key, _ in items:
            if key in seen:
                repeated.repeated.append(key)
            seen.add(key)
        strange.append("repeated key")
        return repeated

    def integer(literal: str) -> Any:
        try:
            return int(literal)
        except ValueError:
            strange.append("long integer")
            return _Number(f"an integer of {len(literal.lstrip('-'))} digits is too long; "
                           "use a JSON integer in the field's range")

    def real(literal: str) -> Any:
        value = float(literal)
        if math.isinf(value):
            strange.append("infinite number")
            return _Number(f"the number {literal[:20]}{'...' if len(literal) > 20 else ''} is too large "
                           "to be a finite number; use a smaller value")
        return value

    def constant(name: str) -> Any:
        strange.append("not a number")
        return _Number(f"{name} is not JSON; write a number, or a string if the text is meant")

    try:
        data = json.loads(text, object_pairs_hook=pairs, parse_int=integer, parse_float=real,
                          parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise SpecError(f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
                        source=source) from None
    except RecursionError:
        raise SpecError("JSON nested too deeply", source=source) from None
    if strange:
        raise SpecError(_strange_issues(data), source=source)
    return data


class _Repeated(dict[str, Any]):
    """An object that had a key more than once (``repeated``: those keys)."""

    def __init__(self, items: dict[str, Any]) -> None:
        super().__init__(items)
        self.repeated: list[str] = []


@dataclass(frozen=True, slots=True)
class _Number:
    """A number literal that can't be used: where it is found, ``problem`` says why."""

    problem: str


def _strange_issues(data: Any) -> list[Issue]:
    """Every repeated key and unusable number in ``data``, with its JSON path (walked without
    recursion: the document may be as deep as the JSON reader allows)."""
    issues: list[Issue] = []
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, _Number):
            issues.append(Issue(path, node.problem))
        elif isinstance(node, dict):
            for key in dict.fromkeys(getattr(node, "repeated", ())):
                issues.append(Issue(_join(path, key), "this key appears more than once in the object; give "
                                    "each key once (JSON readers disagree on which value wins)"))
            stack += [(_join(path, k), v) for k, v in reversed(node.items())]
        elif isinstance(node, list):
            stack += [(f"{path}[{i}]", v) for i, v in reversed(list(enumerate(node)))]
    return issues


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def detect_kind(data: Any) -> Kind:
    if isinstance(data, dict):
        if isinstance(data.get("value"), list) and "commandLine" not in data:
            return "collection"
        if "commandLine" not in data and _JOB_KEYS & set(data):
            return "job"
    return "task"


def load_data(data: Any, *, kind: Kind | None = None, source: str = "<input>") -> Document:
    kind = kind or detect_kind(data)
    models: dict[str, type[TaskSpec] | type[JobSpec] | type[TaskCollection]] = {
        "task": TaskSpec, "job": JobSpec, "collection": TaskCollection}
    model_type = models[kind]
    if not isinstance(data, dict):
        raise SpecError([Issue("", f"a {kind} must be a JSON object, not {type(data).__name__}")], source=source)
    try:
        model = model_type.model_validate(data)
    except ValidationError as exc:
        raise SpecError(issues_from(exc, model_type), source=source) from None
    except (RecursionError, OverflowError, ValueError) as exc:  # defensive: never a traceback
        raise SpecError(f"cannot read this {kind}: {exc}", source=source) from None
    return Document(kind, model, source)


def load_document(path: Path | str, *, kind: Kind | None = None) -> Document:
    return load_data(read_json(path), kind=kind, source=str(path))


def load_task(path: Path | str) -> TaskSpec:
    doc = load_document(path)
    if not isinstance(doc.model, TaskSpec):
        raise SpecError(f"expected a task (Create Task body), found a {doc.kind}", source=str(path))
    return doc.model


def load_job(path: Path | str) -> JobSpec:
    doc = load_document(path, kind="job")
    assert isinstance(doc.model, JobSpec)
    return doc.model


def format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "tagged-union")):  # pydantic internals, not JSON keys
            continue
        else:
            out += f".{part}" if out else part
    return out


# pydantic's strict type errors -> what JSON type the field wants.
_WANTED = {
    "int_type": "a JSON integer", "int_parsing": "a JSON integer", "int_from_float": "a JSON integer",
    "bool_type": "true or false (a JSON boolean)", "bool_parsing": "true or false (a JSON boolean)",
    "string_type": "a JSON string", "list_type": "a JSON array (a list)", "dict_type": "a JSON object",
    "model_type": "a JSON object", "model_attributes_type": "a JSON object",
}


def _json_type(value: Any) -> str:
    """The JSON type of a value (never the value: it may be a secret)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number with a fraction or exponent" if isinstance(value, float) else "an integer"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list | tuple) else "an object"


def _type_message(kind: str, value: Any, *, field: bool) -> str:
    wanted = _WANTED[kind]
    message = f"must be {wanted}, not {_json_type(value)}"
    if value is None and field:  # optional fields' nulls are dropped earlier: this one is required
        message += " (this field is required)"
    elif isinstance(value, str) and (
            (kind.startswith("bool") and value.strip() in ("true", "false"))
            or (kind.startswith("int") and re.fullmatch(r"-?[0-9]{1,10}", value.strip()))):
        message += f"; write {value.strip()} without quotes"
    elif isinstance(value, float) and kind.startswith("int") and value.is_integer():
        message += f"; write {int(value)}"
    return message


def issues_from(exc: ValidationError, model_type: type[BatchModel]) -> list[Issue]:
    issues: list[Issue] = []
    for err in exc.errors(include_url=False, include_input=True):
        loc = tuple(err["loc"])
        path = format_loc(loc)
        kind = err["type"]
        message = err["msg"]
        if kind == "extra_forbidden":
            owner = _model_at(model_type, loc[:-1])
            key = str(loc[-1])
            known = owner.known_fields() if owner else []
            hint = owner.field_hints.get(key) if owner else None
            message = f"unknown field; {hint}; allowed: {', '.join(known)}" if hint else \
                f"unknown field; {did_you_mean(key, known)}"
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "string_unicode":  # pydantic-core's own check (a constrained str): a lone surrogate
            message = SURROGATE
        elif kind in _WANTED:
            message = _type_message(kind, err.get("input"), field=bool(loc) and isinstance(loc[-1], str))
        issues.append(Issue(path, message))
    return issues


def _model_at(model: type[BatchModel], loc: tuple[int | str, ...]) -> type[BatchModel] | None:
    """The model class that sits at ``loc`` (aliases and list indexes) below ``model``."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BatchModel)):
            return None
        field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BatchModel) else None


def _unwrap(annotation: Any) -> Any:
    """The model type inside ``X | None``, ``list[X]``."""
    for arg in (get_args(annotation) or ()):
        inner = _unwrap(arg) if get_args(arg) else arg
        if isinstance(inner, type) and issubclass(inner, BatchModel):
            return inner
    return annotation


def check_task_in_job(task: TaskSpec, job: JobSpec | None) -> list[Issue]:
    """The add-task rules that depend on the job (Batch answers HTTP 400 / 409 for these)."""
    if job is None:
        return []
    issues: list[Issue] = []
    for special, code in ((job.job_preparation_task, "TaskIdSameAsJobPreparationTask"),
                          (job.job_release_task, "TaskIdSameAsJobReleaseTask")):
        if special and special.id.casefold() == task.id.casefold():
            issues.append(Issue("id", f"{task.id!r} is the id of the job's "
                                f"{'preparation' if code.endswith('PreparationTask') else 'release'} task "
                                f"({code}); choose another task id"))
    if task.depends_on and not job.uses_task_dependencies:
        issues.append(Issue("dependsOn", "the job does not set usesTaskDependencies: true "
                            "(TaskDependenciesNotSpecifiedOnJob); set it on the job or remove dependsOn"))
    if job.task_failure_mode == "noaction" and task.exit_conditions:
        ec = task.exit_conditions
        named = [("preProcessingError", ec.pre_processing_error), ("fileUploadError", ec.file_upload_error),
                 ("default", ec.default)]
        named += [(f"exitCodes[{i}].exitOptions", m.exit_options) for i, m in enumerate(ec.exit_codes or [])]
        named += [(f"exitCodeRanges[{i}].exitOptions", m.exit_options)
                  for i, m in enumerate(ec.exit_code_ranges or [])]
        for where, options in named:
            if options is not None and options.job_action is not None:
                issues.append(Issue(
                    f"exitConditions.{where}.jobAction",
                    "the job's onTaskFailure is noaction, so Batch rejects a task that sets jobAction; "
                    "set onTaskFailure to performExitOptionsJobAction on the job or remove jobAction"))
    return issues
