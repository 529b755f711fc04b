"""Deployment profiles: turn measured compute time and payload size into latency (s) and energy (J).

Bottom layer: numpy and the standard library only, so the on-device runtime can re-cost decisions
for the current network without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

TIERS = ("edge", "cloud")


@dataclass(frozen=True)
class DeploymentProfile:
    """Where the router runs and how it reaches the cloud.

    Fields (units): ``edge_power_w`` device power while computing (W); ``idle_power_w`` device power
    while waiting for a cloud answer (W); ``radio_tx_power_w`` radio power while uploading (W);
    ``uplink_mbps`` / ``downlink_mbps`` (Mbit/s); ``rtt_s`` network round trip (s); ``response_bytes``
    size of a cloud reply (bytes); ``edge_compute_scale`` / ``cloud_compute_scale`` convert measured
    compute seconds into seconds on the target hardware (1.0 when measured there); ``request_bytes``
    (bytes, optional) what every cloud request of the deployed device carries (e.g. its camera frames,
    larger than the collected images), replacing the payloads measured at collection in every cost
    (None: as measured; a gateway request's own size replaces both, ``decision.CostSpec.costs``).
    The figures in ``configs/profiles/*.yaml`` cite their sources (datasheets, measurement papers).
    """

    name: str
    edge_power_w: float
    idle_power_w: float
    radio_tx_power_w: float
    uplink_mbps: float
    downlink_mbps: float
    rtt_s: float
    response_bytes: int = 512
    edge_compute_scale: float = 1.0
    cloud_compute_scale: float = 1.0
    request_bytes: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "DeploymentProfile":
        """Build from a mapping (a parsed YAML file or a manifest). Raises ValueError on unknown or
        missing keys, or on non-positive bandwidth."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"deployment profile: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        try:
            prof = cls(**d)
        except TypeError as e:
            raise ValueError(f"deployment profile: {e}") from None
        if prof.uplink_mbps <= 0 or prof.downlink_mbps <= 0:
            raise ValueError(f"deployment profile {prof.name!r}: bandwidths must be > 0 Mbit/s")
        rb = prof.request_bytes
        if rb is not None and (isinstance(rb, bool) or not isinstance(rb, (int, float)) or not 0 < rb < float("inf")):
            raise ValueError(f"deployment profile {prof.name!r}: request_bytes must be a number of bytes > 0, got {rb!r}")
        return prof

    def to_dict(self) -> dict:
        """The fields as a mapping (``request_bytes`` only when set, so older manifests read the same)."""
        d = asdict(self)
        if d["request_bytes"] is None:
            del d["request_bytes"]
        return d

    def with_network(self, uplink_mbps: float | None = None, rtt_s: float | None = None) -> "DeploymentProfile":
        """A copy with the current uplink bandwidth (Mbit/s) and/or round trip (s). Raises ValueError for
        an uplink that is not > 0. (Runs per gateway request: ``replace``, not a round trip through a
        dict.)"""
        if uplink_mbps is not None and not uplink_mbps > 0:
            raise ValueError(f"deployment profile {self.name!r}: bandwidths must be > 0 Mbit/s, got {uplink_mbps!r}")
        return replace(self, uplink_mbps=self.uplink_mbps if uplink_mbps is None else uplink_mbps,
                       rtt_s=self.rtt_s if rtt_s is None else rtt_s)

    def cost(self, tier, compute_s, payload_bytes) -> tuple[np.ndarray, np.ndarray]:
        """Latency (s) and device energy (J) of running queries on a tier.

        Args: ``tier`` "edge" or "cloud" (scalar or array of str); ``compute_s`` measured compute time
        (s); ``payload_bytes`` bytes sent off-device (ignored on the edge; replaced by ``request_bytes``
        when the profile sets it). Arrays broadcast.
        Returns float64 arrays ``(latency_s, energy_j)``.

        Edge: latency = compute * edge_scale; energy = edge_power * latency.
        Cloud: upload = payload * 8 / uplink; latency = rtt + upload + response * 8 / downlink +
        compute * cloud_scale; energy = radio_tx_power * upload + idle_power * (latency - upload)
        (the device's side only: the usual accounting of offloading energy, e.g. Kumar & Lu,
        "Cloud computing for mobile users: can offloading computation save energy?", IEEE Computer 2010).
        """
        tier = np.asarray(tier)
        is_edge = tier == "edge"
        bad = ~(is_edge | (tier == "cloud"))  # not np.isin: ~40 us per call on a few strings (per query here)
        if bad.any():
            raise ValueError(f"unknown tier {tier[bad].flat[0]!r}; expected one of {TIERS}")
        compute_s = np.asarray(compute_s, dtype=np.float64)
        payload = np.asarray(payload_bytes, dtype=np.float64)
        if self.request_bytes is not None:
            payload = np.full(payload.shape, float(self.request_bytes))
        edge_lat = compute_s * self.edge_compute_scale
        upload = payload * 8.0 / (self.uplink_mbps * 1e6)
        cloud_lat = (self.rtt_s + upload + self.response_bytes * 8.0 / (self.downlink_mbps * 1e6)
                     + compute_s * self.cloud_compute_scale)
        latency = np.where(is_edge, edge_lat, cloud_lat)
        energy = np.where(is_edge, self.edge_power_w * edge_lat,
                          self.radio_tx_power_w * upload + self.idle_power_w * (cloud_lat - upload))
        return latency, energy
