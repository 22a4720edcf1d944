"""Counters for GET /metrics in Prometheus' text format: requests, errors, tokens, slots and queue, time to
first token and generation time, and the model's caches (prompt tokens reused from a KV cache vs evaluated,
image embedding cache hits and misses: the model's own counters, since it was loaded)."""
from __future__ import annotations

import threading
from collections import Counter
from typing import Optional


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests = Counter()      # by endpoint
        self.errors = Counter()        # by status code
        self.tokens = Counter()        # prompt / completion
        self.seconds = Counter()       # generation, time_to_first_token (sums)
        self.counts = Counter()        # generations, first tokens (for the sums' means)

    def request(self, endpoint: str) -> None:
        with self._lock:
            self.requests[endpoint] += 1

    def error(self, status: int) -> None:
        with self._lock:
            self.errors[str(status)] += 1

    def generation(self, info: dict, seconds: float, first_token: float = None) -> None:
        with self._lock:
            self.tokens["prompt"] += int(info.get("prompt_tokens", 0))
            self.tokens["completion"] += int(info.get("completion_tokens", 0))
            self.seconds["generation"] += seconds
            self.counts["generation"] += 1
            if first_token is not None:
                self.seconds["time_to_first_token"] += first_token
                self.counts["time_to_first_token"] += 1

    def text(self, busy: int, waiting: int, caches: Optional[dict] = None) -> str:
        """caches: the model's cache_stats() (its keys become owl_<key>_total counters)."""
        with self._lock:
            lines = ["# TYPE owl_requests_total counter"]
            lines += [f'owl_requests_total{{endpoint="{k}"}} {v}' for k, v in sorted(self.requests.items())]
            lines += ["# TYPE owl_errors_total counter"]
            lines += [f'owl_errors_total{{status="{k}"}} {v}' for k, v in sorted(self.errors.items())]
            lines += ["# TYPE owl_tokens_total counter"]
            lines += [f'owl_tokens_total{{kind="{k}"}} {self.tokens[k]}' for k in ("prompt", "completion")]
            for k in ("generation", "time_to_first_token"):
                lines += [f"# TYPE owl_{k}_seconds summary", f"owl_{k}_seconds_sum {self.seconds[k]:.6f}",
                          f"owl_{k}_seconds_count {self.counts[k]}"]
            lines += ["# TYPE owl_slots_busy gauge", f"owl_slots_busy {busy}",
                      "# TYPE owl_queue_waiting gauge", f"owl_queue_waiting {waiting}"]
        for k, v in (caches or {}).items():
            lines += [f"# TYPE owl_{k}_total counter", f"owl_{k}_total {int(v)}"]
        return "\n".join(lines) + "\n"
