"""The live network estimate: uplink bandwidth and round trip from recent cloud calls (standard library).

Each successful non-streaming call to a cloud model over HTTP is one observation: ``b`` the request
bytes sent and ``t`` the call's wall seconds less its ``fixed_s`` (the part that is neither round trip
nor upload: the model's expected compute time from the manifest and the reply's download time under
the profile). Under the deployment profile's own model ``t = rtt + 8 b / uplink``, so a least-squares
line through (b, t) gives ``8 / uplink`` as its slope and ``rtt`` as its intercept. The line is fitted
to exponentially weighted moments (each new call weighs 2**(1/half_life) times the one before: a moving
average over about ``half_life`` calls), so the estimate follows a changing network.

The slope needs requests of different sizes: while the weighted spread of ``b`` is under 5% of its mean
(or the fitted slope is not positive), the uplink stays at the prior (the configured value or the
profile's) and the whole mean time beyond the upload at that uplink is the round trip. Nothing is
reported before ``min_samples`` calls, and after ``max_age_s`` s without one the estimate is dropped
(the decision then uses the prior again, so a gateway whose traffic all went to the edge does not keep
an old estimate for ever).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

MIN_UPLINK_MBPS, MAX_UPLINK_MBPS = 0.01, 100_000.0
MIN_SPREAD = 0.05  # weighted std of request bytes / their mean, below which the slope is not fitted


@dataclass(frozen=True)
class Estimate:
    """``uplink_mbps`` (Mbit/s), ``rtt_s`` (s), ``samples`` (calls seen, capped by nothing), ``fitted``
    (True when the uplink comes from the slope, False when it is the prior)."""

    uplink_mbps: float
    rtt_s: float
    samples: int
    fitted: bool


class NetworkEstimator:
    """See the module docstring. ``prior_uplink_mbps`` used until the slope can be fitted;
    ``clock`` seconds (monotonic) for ``max_age_s``. Thread-safe."""

    def __init__(self, prior_uplink_mbps: float, half_life: float = 32.0, min_samples: int = 8,
                 max_age_s: float = 300.0, clock=time.monotonic):
        if not prior_uplink_mbps > 0:
            raise ValueError(f"prior uplink must be > 0 Mbit/s, got {prior_uplink_mbps}")
        self.prior_uplink_mbps = float(prior_uplink_mbps)
        self.decay = 0.5 ** (1.0 / half_life)
        self.min_samples, self.max_age_s, self.clock = int(min_samples), float(max_age_s), clock
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget every observation."""
        with self._lock:
            self._w = self._b = self._t = self._bb = self._bt = 0.0
            self._n, self._last = 0, None

    def add(self, payload_bytes: float, seconds: float, fixed_s: float = 0.0) -> None:
        """One successful cloud call: ``payload_bytes`` sent, ``seconds`` its wall time, ``fixed_s`` the
        part of it that is neither round trip nor upload (see the module docstring)."""
        b, t = float(payload_bytes), max(float(seconds) - float(fixed_s), 0.0)
        if not (math.isfinite(b) and math.isfinite(t)) or b < 0:
            return
        with self._lock:
            now = self.clock()
            if self._last is not None and now - self._last > self.max_age_s:
                self._w = self._b = self._t = self._bb = self._bt = 0.0
                self._n = 0
            d = self.decay
            self._w = d * self._w + 1.0
            self._b = d * self._b + b
            self._t = d * self._t + t
            self._bb = d * self._bb + b * b
            self._bt = d * self._bt + b * t
            self._n += 1
            self._last = now

    def estimate(self) -> Estimate | None:
        """The current estimate, or None before ``min_samples`` calls or after ``max_age_s`` s without one."""
        with self._lock:
            if self._n < self.min_samples or self._last is None or self.clock() - self._last > self.max_age_s:
                return None
            w = self._w
            mb, mt = self._b / w, self._t / w
            var = max(self._bb / w - mb * mb, 0.0)
            cov = self._bt / w - mb * mt
            n = self._n
        if mb > 0 and math.sqrt(var) >= MIN_SPREAD * mb and cov > 0:
            slope = cov / var  # s per byte
            uplink = min(max(8.0 / slope / 1e6, MIN_UPLINK_MBPS), MAX_UPLINK_MBPS)
            rtt = mt - slope * mb
            if rtt >= 0:
                return Estimate(uplink, rtt, n, True)
            # a negative intercept: the line is steeper than the data near b = 0 allow; keep the slope and
            # put the round trip at 0 rather than below
            return Estimate(uplink, 0.0, n, True)
        upload = mb * 8.0 / (self.prior_uplink_mbps * 1e6)
        return Estimate(self.prior_uplink_mbps, max(mt - upload, 0.0), n, False)
