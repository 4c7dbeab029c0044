"""Every exception batch-agent raises, in one place.

A task's own failure (non-zero exit, wall clock, pre-processing or upload error) is never an
exception: it is an ``agent.status.FailureInfo`` value. These classes are for bad input and for
the agent's own faults.

    AgentError                      base of everything below
    ├── InputError                  the user's input is wrong; the CLI exits 2
    │   ├── SpecError               task / job JSON does not validate (carries every issue)
    │   └── ConfigError             agent config (TOML, env, flags) is wrong
    ├── StateError                  the state store cannot be read or written
    └── RunnerError                 a runner failed in a way that is the agent's fault
"""

from __future__ import annotations

from dataclasses import dataclass


class AgentError(Exception):
    """Base class of every batch-agent exception."""


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem in the input: where it is (a JSON path) and what is wrong / allowed."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InputError(AgentError):
    """The user's input is wrong; the message says where and how to fix it."""

    def __init__(self, issues: list[Issue] | str, *, source: str = "") -> None:
        self.issues = [Issue("", issues)] if isinstance(issues, str) else list(issues)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.source}: " if self.source else ""
        if len(self.issues) == 1:
            return f"{head}{self.issues[0]}"
        lines = [f"{head}{len(self.issues)} problems:"]
        lines += [f"  - {issue}" for issue in self.issues]
        return "\n".join(lines)


class SpecError(InputError):
    """A task or job document does not validate."""


class ConfigError(InputError):
    """The agent's own configuration is wrong."""


class StateError(AgentError):
    """The state store cannot be read or written."""


class RunnerError(AgentError):
    """A runner could not do its job for a reason that is not the task's fault."""
