"""Label selectors, Kubernetes' syntax: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`,
`a` (exists) and `!a` (does not exist), joined by commas. Pure and stdlib-only, so the SDK
and the CLI check a selector with the same grammar the control plane applies.

Invariants: an empty selector matches everything; `!=` and `notin` match objects without the
label (as in Kubernetes); a term that does not parse is a `ValueError` naming it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Requirement", "Selector", "parse_selector"]

_KEY = r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?"
_SET_TERM = re.compile(rf"^(?P<key>{_KEY})\s+(?P<op>in|notin)\s+\((?P<values>[^()]*)\)$")
_EQ_TERM = re.compile(rf"^(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})$")
_EXISTS = re.compile(rf"^(?P<neg>!?)\s*(?P<key>{_KEY})$")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op == "=":
            return value == self.values[0]
        if self.op == "!=":
            return value != self.values[0]
        if self.op == "in":
            return value in self.values
        if self.op == "notin":
            return value not in self.values
        if self.op == "exists":
            return value is not None
        return value is None


@dataclass(frozen=True, slots=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def equalities(self) -> dict[str, str]:
        """The `key=value` terms (a store may pre-filter with them)."""
        return {r.key: r.values[0] for r in self.requirements if r.op == "="}

    def __str__(self) -> str:
        parts = []
        for r in self.requirements:
            if r.op in ("=", "!="):
                parts.append(f"{r.key}{r.op}{r.values[0]}")
            elif r.op in ("in", "notin"):
                parts.append(f"{r.key} {r.op} ({','.join(r.values)})")
            else:
                parts.append(r.key if r.op == "exists" else f"!{r.key}")
        return ",".join(parts)


def _terms(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(ch)
    terms.append("".join(current))
    return [t.strip() for t in terms if t.strip()]


def parse_selector(text: str) -> Selector:
    """`team=pay,env in (dev,test),!legacy` → a Selector; ValueError naming a bad term."""
    requirements: list[Requirement] = []
    for term in _terms(text):
        if found := _SET_TERM.match(term):
            values = tuple(v.strip() for v in found["values"].split(",") if v.strip())
            if not values or not all(re.fullmatch(_VALUE, v) for v in values):
                raise ValueError(f"selector term {term!r}: expected KEY {found['op']} (V1,V2,...)")
            requirements.append(Requirement(found["key"], found["op"], values))
        elif found := _EQ_TERM.match(term):
            op = "=" if found["op"] in ("=", "==") else "!="
            requirements.append(Requirement(found["key"], op, (found["value"],)))
        elif found := _EXISTS.match(term):
            requirements.append(Requirement(found["key"], "!exists" if found["neg"] else "exists"))
        else:
            raise ValueError(
                f"selector term {term!r}: expected KEY=VALUE, KEY!=VALUE, KEY in (V,...), "
                "KEY notin (V,...), KEY or !KEY"
            )
    return Selector(tuple(requirements))
