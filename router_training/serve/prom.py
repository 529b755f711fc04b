"""The gateway's metrics in the Prometheus text exposition format (version 0.0.4), standard library only.

=========================================  =========  ====================================================
metric                                     type       labels / meaning
=========================================  =========  ====================================================
router_requests_total                      counter    model, tier, route (router / direct / no-image):
                                                      requests answered by that model
router_request_errors_total                counter    status: requests answered with an error object
router_fallbacks_total                     counter    reason (cloud-error / edge-error / low-confidence)
router_upstream_failures_total             counter    model, kind (``upstream`` failure kinds)
router_decision_seconds                    histogram  time to decide (image decoding, features, ONNX run)
router_request_seconds                     histogram  route: whole request in the gateway (streams: to the
                                                      last event)
router_upstream_seconds                    histogram  model: the successful upstream call
router_in_flight                           gauge      requests being handled now
router_network_uplink_mbps                 gauge      the uplink the next decision uses (Mbit/s)
router_network_rtt_seconds                 gauge      the round trip the next decision uses (s)
router_network_estimate_samples            gauge      cloud calls behind the live estimate
router_network_source                      gauge      source (config / estimate / profile): 1 for the one in use
=========================================  =========  ====================================================
"""

from __future__ import annotations

import bisect
import threading

DECISION_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(d: dict) -> str:
    if not d:
        return ""
    esc = {k: str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for k, v in d.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(esc.items())) + "}"


def _num(v: float) -> str:
    return repr(float(v)) if v == v else "NaN"


class Histogram:
    """Cumulative buckets with upper bounds ``buckets`` (s), plus sum and count."""

    def __init__(self, buckets: tuple):
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v

    def lines(self, name: str, labels: dict) -> list[str]:
        out, acc = [], 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts):
            acc += c
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f"{name}_bucket{_labels({**labels, 'le': le})} {acc}")
        out += [f"{name}_sum{_labels(labels)} {_num(self.sum)}", f"{name}_count{_labels(labels)} {acc}"]
        return out


class Metrics:
    """The counters, histograms and gauges above; ``render()`` is the ``/metrics`` body. Thread-safe."""

    HELP = {
        "router_requests_total": ("counter", "Requests answered, by answering model, its tier and how it was chosen."),
        "router_request_errors_total": ("counter", "Requests answered with an error object, by HTTP status."),
        "router_fallbacks_total": ("counter", "Requests answered by another model than the first choice, by reason."),
        "router_upstream_failures_total": ("counter", "Failed upstream calls (after retries), by model and kind."),
        "router_decision_seconds": ("histogram", "Routing decision time: image decoding, features, ONNX run (s)."),
        "router_request_seconds": ("histogram", "Time of a whole request inside the gateway (s)."),
        "router_upstream_seconds": ("histogram", "Time of the successful upstream call (s)."),
        "router_in_flight": ("gauge", "Requests being handled now."),
        "router_network_uplink_mbps": ("gauge", "Uplink bandwidth the next decision uses (Mbit/s)."),
        "router_network_rtt_seconds": ("gauge", "Network round trip the next decision uses (s)."),
        "router_network_estimate_samples": ("gauge", "Cloud calls behind the live network estimate."),
        "router_network_source": ("gauge", "Where the network figures come from (1 = in use)."),
    }

    def __init__(self):
        self._lock = threading.Lock()
        self._counters: dict[tuple, float] = {}
        self._hist: dict[tuple, Histogram] = {}
        self._gauges: dict[tuple, float] = {}

    @staticmethod
    def _key(name: str, labels: dict) -> tuple:
        return name, tuple(sorted(labels.items()))

    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        with self._lock:
            k = self._key(name, labels)
            self._counters[k] = self._counters.get(k, 0.0) + value

    def observe(self, name: str, value: float, **labels) -> None:
        buckets = DECISION_BUCKETS if name == "router_decision_seconds" else LATENCY_BUCKETS
        with self._lock:
            k = self._key(name, labels)
            self._hist.setdefault(k, Histogram(buckets)).observe(value)

    def set(self, name: str, value: float, **labels) -> None:
        with self._lock:
            self._gauges[self._key(name, labels)] = float(value)

    def value(self, name: str, **labels) -> float:
        """A counter's or gauge's current value (0 when never set); a histogram's count."""
        k = self._key(name, labels)
        with self._lock:
            if k in self._hist:
                return float(sum(self._hist[k].counts))
            return self._counters.get(k, self._gauges.get(k, 0.0))

    def render(self) -> str:
        """The exposition text: ``# HELP`` / ``# TYPE`` then the samples of each metric, in HELP order."""
        with self._lock:
            lines = []
            for name, (kind, text) in self.HELP.items():
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                store = {"counter": self._counters, "gauge": self._gauges}.get(kind)
                if store is None:
                    for (n, labels), h in sorted(self._hist.items()):
                        if n == name:
                            lines += h.lines(name, dict(labels))
                    continue
                for (n, labels), v in sorted(store.items()):
                    if n == name:
                        lines.append(f"{name}{_labels(dict(labels))} {_num(v)}")
            return "\n".join(lines) + "\n"
