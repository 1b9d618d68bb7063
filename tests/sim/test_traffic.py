"""IDM traffic: the platoon settles at the closed-form equilibrium; leader search by sorting matches brute force."""

from __future__ import annotations

import math

import pytest
import torch

from fleetloop.sim.traffic import IdmParams, find_leaders, road_traffic_step

P = IdmParams()


def equilibrium_gap_m(speed_mps: float, p: IdmParams) -> float:
    """s_e(v) = (s0 + v T) / sqrt(1 - (v / v0)^delta): where IDM acceleration is zero at equal speeds."""
    return (p.min_gap_m + speed_mps * p.time_headway_s) / math.sqrt(1.0 - (speed_mps / p.v0_mps) ** p.delta)


def test_idm_platoon_reaches_closed_form_equilibrium_gap() -> None:
    n, lead_speed = 10, 20.0
    # Start bunched up and slow; the leader's desired speed is 20 m/s, the others' 33.3 m/s.
    front = torch.tensor([-15.0 * i for i in range(n)], dtype=torch.float64)
    speed = torch.full((n,), 10.0, dtype=torch.float64)
    accel = torch.zeros(n, dtype=torch.float64)
    lane = torch.zeros(n, dtype=torch.int64)
    length = torch.full((n,), 5.0, dtype=torch.float64)
    v0 = torch.full((n,), P.v0_mps, dtype=torch.float64)
    v0[0] = lead_speed
    for _ in range(3000):  # 300 s
        front, speed, accel = road_traffic_step(front, speed, accel, lane, length, P, 0.1, v0_mps=v0)
    gaps = front[:-1] - length[:-1] - front[1:]
    expected = equilibrium_gap_m(float(speed[0]), P)
    assert float(speed[0]) == pytest.approx(lead_speed, abs=0.01)
    assert torch.allclose(speed, speed[0].expand(n), atol=0.01)
    assert torch.allclose(gaps, torch.full_like(gaps, expected), rtol=0.005), (gaps, expected)


def test_sorted_leader_search_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    n = 60
    front = torch.rand(2, n, generator=g, dtype=torch.float64) * 500
    lane = torch.randint(0, 3, (2, n), generator=g)
    present = torch.rand(2, n, generator=g) > 0.2
    length = torch.full((2, n), 4.0, dtype=torch.float64)
    v = torch.rand(2, n, generator=g, dtype=torch.float64)
    info = find_leaders(front, lane, length, v, v, present)
    for r in range(2):
        for i in range(n):
            ahead = [
                j
                for j in range(n)
                if j != i and present[r, j] and present[r, i] and lane[r, j] == lane[r, i] and front[r, j] > front[r, i]
            ]
            want = min(ahead, key=lambda j: float(front[r, j])) if ahead else -1
            assert int(info.index[r, i]) == want
