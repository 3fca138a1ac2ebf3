"""Model table: the ids the gateway and the simulator know, their prices and whether
they accept an assistant prefill (ANTHROPIC-PROTOCOL.md §5, §6).

Prices are USD per million tokens and change; `Settings.prices_file` overrides them.
A batch (Claude's Message Batches API) is billed at `batch_discount` of these prices.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tokenrelay.providers.base import Usage


@dataclass(frozen=True, slots=True)
class ModelInfo:
    input: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float
    output: float
    accepts_prefill: bool


def _fields(info: ModelInfo) -> dict[str, Any]:
    return {name: getattr(info, name) for name in ModelInfo.__slots__}


def _m(i: float, w5: float, w1: float, r: float, o: float, prefill: bool) -> ModelInfo:
    return ModelInfo(i, w5, w1, r, o, prefill)


DEFAULT_MODELS: dict[str, ModelInfo] = {
    "claude-fable-5-1": _m(10, 12.5, 20, 0.25, 50, False),
    "claude-mythos-5-1": _m(10, 12.5, 20, 0.25, 50, False),
    "claude-fable-5": _m(10, 12.5, 20, 1, 50, False),
    "claude-mythos-5": _m(10, 12.5, 20, 1, 50, False),
    "claude-opus-5-5": _m(4, 5, 8, 0.2, 20, False),
    "claude-opus-5": _m(5, 6.25, 10, 0.5, 25, False),
    "claude-opus-4-8": _m(5, 6.25, 10, 0.5, 25, False),
    "claude-opus-4-7": _m(5, 6.25, 10, 0.5, 25, False),
    "claude-opus-4-6": _m(5, 6.25, 10, 0.5, 25, False),
    "claude-opus-4-5": _m(5, 6.25, 10, 0.5, 25, True),
    "claude-sonnet-5-5": _m(2, 2.5, 4, 0.2, 10, False),
    "claude-sonnet-5": _m(2, 2.5, 4, 0.2, 10, False),
    "claude-sonnet-4-6": _m(3, 3.75, 6, 0.3, 15, False),
    "claude-sonnet-4-5": _m(3, 3.75, 6, 0.3, 15, True),
    "claude-haiku-5-5": _m(0.1, 0.125, 0.2, 0.01, 0.5, False),
    "claude-haiku-4-5": _m(1, 1.25, 2, 0.1, 5, True),
}


# What Claude bills a batch's requests, as a fraction of the table's prices.
BATCH_DISCOUNT = 0.5


class ModelTable:
    def __init__(
        self, models: dict[str, ModelInfo] | None = None, batch_discount: float = BATCH_DISCOUNT
    ) -> None:
        self.models = dict(DEFAULT_MODELS if models is None else models)
        self.batch_discount = batch_discount

    @classmethod
    def from_file(cls, path: Path | None) -> ModelTable:
        """Defaults, with the entries of a JSON file `{"model": {"input": 1, ...}}` laid over;
        its `"batch_discount": 0.5`, if any, sets the batch price's fraction."""
        table = cls()
        if path is None:
            return table
        for name, fields in orjson.loads(path.read_bytes()).items():
            if name == "batch_discount":
                table.batch_discount = float(fields)
                continue
            base = table.models.get(name, _m(0, 0, 0, 0, 0, False))
            merged = {**_fields(base), **fields}
            table.models[name] = ModelInfo(**merged)
        return table

    def __contains__(self, model: str) -> bool:
        return model in self.models

    def accepts_prefill(self, model: str) -> bool:
        """Unknown models are assumed to reject prefill: a restart is safe, a splice is not."""
        info = self.models.get(model)
        return info is not None and info.accepts_prefill

    def mark_rejects_prefill(self, model: str) -> None:
        """The upstream refused a prefill for `model`: never splice for it again."""
        info = self.models.get(model)
        if info is not None and info.accepts_prefill:
            self.models[model] = dataclasses.replace(info, accepts_prefill=False)

    def output_micro_usd(self, model: str) -> float:
        """What one output token costs, in micro-dollars (the table's USD per million)."""
        info = self.models.get(model)
        return info.output if info is not None else 0.0

    def cost_usd(self, model: str, usage: Usage, *, batch: bool = False) -> float:
        """What `usage` costs at `model`'s prices; at the batch discount for a batch's."""
        info = self.models.get(model)
        if info is None:
            return 0.0
        total = (
            usage.input_tokens * info.input
            + usage.cache_creation_input_tokens * info.cache_write_5m
            + usage.cache_read_input_tokens * info.cache_read
            + usage.output_tokens * info.output
        )
        if batch:
            total *= self.batch_discount
        return round(total / 1e6, 8)
