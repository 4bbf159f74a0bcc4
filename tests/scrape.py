"""Reading the admin listener's `/metrics` in tests, with prometheus_client's own parser."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ProxyHarness


@dataclass(frozen=True)
class Scrape:
    """One `/metrics` answer: families by name, samples by name and labels."""

    text: str
    families: dict[str, Any]

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the sample `name` with exactly these labels, or None."""
        for family in self.families.values():
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None

    def samples(self, name: str) -> list[Any]:
        return [s for f in self.families.values() for s in f.samples if s.name == name]

    def sample_names(self) -> set[str]:
        return {s.name for f in self.families.values() for s in f.samples}

    def label_values(self, label: str) -> set[str]:
        """Every value `label` takes in any sample of a `genesys_proxy_*` family."""
        return {
            s.labels[label]
            for name, f in self.families.items()
            if name.startswith("genesys_proxy_")
            for s in f.samples
            if label in s.labels
        }


async def scrape(harness: ProxyHarness) -> Scrape:
    response = await harness.admin.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    return Scrape(text, {f.name: f for f in text_string_to_metric_families(text)})
