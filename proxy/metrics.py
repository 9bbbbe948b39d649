"""A few Prometheus counters, kept in process and rendered on `/metrics`."""

from __future__ import annotations

from collections import Counter

_HELP = {
    "meterway_requests_total": "Requests answered on /v1 LLM endpoints, by provider and status.",
    "meterway_upstream_retries_total": "Upstream attempts retried on another provider key.",
    "meterway_estimated_usage_total": "Billed requests whose usage had to be estimated.",
    "meterway_enqueue_failures_total": "Usage events that could not be enqueued at once.",
    "meterway_provider_keys_disabled_total": "Provider keys disabled after upstream 401/403.",
}


class Metrics:
    def __init__(self) -> None:
        self._counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        self._counters[(name, tuple(sorted(labels.items())))] += amount

    def value(self, name: str, **labels: str) -> int:
        return self._counters[(name, tuple(sorted(labels.items())))]

    def render(self) -> str:
        lines: list[str] = []
        for name, help_text in _HELP.items():
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} counter")
            samples = [(k[1], v) for k, v in self._counters.items() if k[0] == name]
            if not samples:
                lines.append(f"{name} 0")
            for labels, value in sorted(samples):
                rendered = ",".join(f'{k}="{v}"' for k, v in labels)
                lines.append(f"{name}{{{rendered}}} {value}" if rendered else f"{name} {value}")
        return "\n".join(lines) + "\n"
