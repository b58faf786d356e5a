"""What `fmb setup check` says: one line per item, ok / missing / FAIL with the reason, and a summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

OK, MISSING, FAIL = "ok", "missing", "FAIL"


@dataclass(frozen=True)
class Item:
    status: str  # OK, MISSING or FAIL
    name: str
    detail: str
    required: bool = True  # an optional item that is not ok is reported but fails nothing

    @property
    def failed(self) -> bool:
        return self.required and self.status != OK

    def line(self) -> str:
        optional = "" if self.required or self.status == OK else " [optional]"
        return f"{self.status:<8} {self.name:<24} {self.detail}{optional}"


@dataclass(frozen=True)
class Report:
    items: list[Item]

    @property
    def failures(self) -> list[Item]:
        return [item for item in self.items if item.failed]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def summary(self) -> str:
        counts = Counter(item.status for item in self.items)
        verdict = (f"not ready: {len(self.failures)} required item(s) missing or failed" if self.failures
                   else "ready")
        return f"{counts[OK]} ok, {counts[MISSING]} missing, {counts[FAIL]} failed: {verdict}"
