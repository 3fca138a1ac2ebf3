"""A gateway's `/metrics`, scraped and read with prometheus_client's own parser (not
our code), and what moved between two scrapes."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

# A sample: its name (with `_total`, `_count`, … as exported) and its labels, sorted.
Key = tuple[str, tuple[tuple[str, str], ...]]


def key(name: str, **labels: str) -> Key:
    return name, tuple(sorted(labels.items()))


@dataclass(frozen=True)
class Scrape:
    samples: dict[Key, float]

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; 0 for a labelled series never used
        (it appears only once it moves)."""
        return self.samples.get(key(name, **labels), 0.0)

    def moved_since(self, before: Scrape) -> dict[Key, float]:
        """Every counter and histogram count that changed, by how much. Sums, buckets,
        `_created` and gauges are left out: their changes follow from these, or are
        times, or are states rather than counts."""
        moved = {}
        for k, value in self.samples.items():
            name = k[0]
            if name.endswith(("_total", "_count")):
                delta = value - before.samples.get(k, 0.0)
                if delta:
                    moved[k] = delta
        return moved


def parse(text: str) -> Scrape:
    samples: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[key(sample.name, **sample.labels)] = sample.value
    return Scrape(samples)


def scrape(base: str, api_key: str | None = None) -> Scrape:
    headers = {"x-api-key": api_key} if api_key else {}
    response = httpx.get(f"{base}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)
