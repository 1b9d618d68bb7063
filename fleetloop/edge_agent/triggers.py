"""On-board triggers and the upload budget: which buffered frames go to the cloud, and why.

Triggers use only what the vehicle knows (its sensors, its commands, the fallback's stage and perceived TTC, the
model's outputs); never ground truth. Trigger bits (uint16, the telemetry column ``trigger_flags``; a unit test
checks them against the bus schema's ``TriggerFlag``)::

    bit 0  FALLBACK_ENGAGED   the arbiter handed the vehicle to the fallback (model -> fallback transition)
    bit 1  HARD_BRAKE         measured deceleration above ``hard_brake_mps2``
    bit 2  NEAR_MISS          perceived TTC below ``near_miss_ttc_s`` (as the vehicle sees it)
    bit 3  DISAGREEMENT       model and fallback commands differ by more than ``disagreement_mps2``
    bit 4  HIGH_UNCERTAINTY   model uncertainty above ``high_uncertainty``
    bit 5  RANDOM_SAMPLE      the unbiased random sample (counter-based per vehicle id and tick)

Uploads are whole clips, admitted atomically (all or nothing) against the budget, so the label stage gets
what the hindsight labeller needs: a trigger at tick t asks for the clip [t - pre_s, t + post_s], and ``post_s``
reaches past the labeller's horizon (3 s) so the trigger moment itself gets a complete label. The random sample
draws frame f (an unbiased sample, counter-based per vehicle id and frame) and asks for the short clip
[f, f + sample_clip_s]. Frame f is decided at tick f + pre_ticks, when every trigger that could cover it is known:
``step`` returns the decision for frame ``tick - pre_ticks`` (the frame itself is read back from the on-board
buffer). Every clip starts at or before the frame being decided, so the admitted clips of a vehicle form one
interval that only grows forward: a clip that overlaps the one being uploaded pays only for the frames it adds.

The budget is a per-vehicle token bucket filled at ``budget_fraction`` per tick, holding at most
``capacity_frames``. The last ``reserve_clips`` clips of it are kept for the severe triggers (``severe_mask``, by
default a near miss): other clips and the random sample spend only what lies above that reserve (ADR 0114). At 2 % a
vehicle refills one clip in 255 s, so without the reserve its first trigger of the day, whatever it was, would take
the budget that a near miss in fog a minute later needs. The bucket starts with room for one clip above the reserve
and the reserve itself (the first event of a run is not lost, nor the first severe one), but those starting tokens
are an advance on the refill, not a gift: the bucket refills only once the vehicle has driven the frames that earn
them (``advance_ticks``, 5,100 ticks = 8.5 min at the defaults). Up to tick t a vehicle can spend at most
max(``initial_frames``, ``budget_fraction`` x (t + 1)) frames, so every run of ``advance_ticks`` or more (any run of
ten minutes at the defaults) uploads at most ``budget_fraction`` of its frames (before ADR 0121 the advance came on
top, and a 10-minute run could upload 3.7 %). A clip the bucket cannot pay for in full is refused whole; its frames
stay in the buffer. Refusals are counted per clip and per frame, by primary reason (the lowest bit set; the bit
order is the priority order). ``trigger_mask`` selects which bits may ask for an upload (the others are still
recorded in ``trigger_flags``): random-only uploads are ``trigger_mask=RANDOM_SAMPLE``. The last ``pre_ticks``
frames of a run are never decided (they stay buffered).

Value weighting (``value_weighting``; the preset ``TriggerConfig.valued``, ADR 0122): a clip is worth what it would
teach, and a vehicle knows what it already sent. Each vehicle counts the frames it drove and the frames it uploaded
per condition class of its own estimate (``CONDITION_NAMES``: clear, fog below ``fog_visibility_m``, wet below
``wet_friction``). The rarity of the condition it is in now is its share of the driving over its share of the
uploads (at most ``rarity_max``, at least its inverse; 1 before anything was uploaded). ``known_frames`` counts, per
class, frames the fleet's model already learnt from as if uploaded (the preset: one clip of clear driving, the
conditions of the clear-weather bootstrap), so a vehicle does not spend its first clip on what the model knows. The
random sample is drawn at ``sample_rate`` x rarity, so uploads follow the conditions driven instead of the start of
the run, and the bits of ``rare_mask`` (the preset: model / fallback disagreement) ask for a clip only while the
condition is under-represented in the uploads (rarity above 1). The safety triggers (a near miss with its reserve,
the fallback taking over) ask as always. A clip that is not severe, in a condition the uploads already cover
(rarity at most 1), leaves ``common_headroom_clips`` clips beside the reserve (ADR 0194): what the model knows goes
up from a full bucket, never from the room a rare condition's clip needs. The preset's random clip is as long as
ten minutes' budget allows beside the reserve, since the labeller's 3 s horizon leaves a clip's end as context. An
uploaded frame is counted in the condition of the tick that decides it, ``pre_s`` later (the estimate is smoothed
over 5 s).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from fleetloop.platform.errors import FleetConfigError
from fleetloop.sim import rng
from fleetloop.sim.compile import compile_graph

__all__ = [
    "CONDITION_NAMES",
    "TRIGGER_BITS",
    "UPLOAD_POLICIES",
    "TriggerConfig",
    "TriggerInputs",
    "TriggerState",
    "UploadDecision",
    "condition_classes",
    "trigger_bits",
    "triggers_step",
    "upload_policy",
]

TRIGGER_BITS = {
    "fallback_engaged": 1 << 0,
    "hard_brake": 1 << 1,
    "near_miss": 1 << 2,
    "disagreement": 1 << 3,
    "high_uncertainty": 1 << 4,
    "random_sample": 1 << 5,
}
N_BITS = len(TRIGGER_BITS)
CONDITION_NAMES = ("clear", "fog", "wet")  # the condition classes of the vehicle's own estimate (value weighting)
_STREAM_SAMPLE = 0x5452  # "TR": the random sample's counter-based stream, apart from the sim's
_NEVER = -(1 << 40)
UPLOAD_POLICIES = ("triggers", "valued", "random")  # `sim run --uploads`
RANDOM_OVERDRAW = 1.6  # random clips drawn per clip the budget pays for: a draw inside an admitted clip adds nothing


@dataclass(frozen=True)
class TriggerConfig:
    """Trigger thresholds and the upload budget.

    Attributes:
        pre_s, post_s: a trigger's clip reaches this far before and after it [s].
        dt_s: tick length [s].
        hard_brake_mps2: measured deceleration that counts as hard braking [m/s²] (the world's event threshold).
        near_miss_ttc_s: perceived TTC below this is a near miss as the vehicle sees it [s].
        disagreement_mps2: model and fallback differ by more than this [m/s²].
        high_uncertainty: model uncertainty above this (model units).
        sample_rate: probability a frame is drawn as the random sample (the start of a random clip) [-].
        sample_clip_s: a random clip reaches this far after the sampled frame [s] (past the labeller's horizon).
        budget_fraction: at most this share of frames is uploaded [-] (default 2 %).
        bucket_frames: token bucket capacity [frames]: how much of a burst (clips) can be saved up (at least one
            clip; see ``capacity_frames``).
        trigger_mask: the bits that may ask for an upload (``TRIGGER_BITS`` values or-ed together).
        severe_mask: the bits whose clips may spend the reserve (default: a near miss as the vehicle perceives it,
            the rarest and most severe trigger, 88 % of first near misses in fog in the loop benchmark's fleet).
        reserve_clips: trigger clips of the bucket kept for the severe bits [clips] (0: first come, first served).
        value_weighting: weight the random sample by the rarity of the current condition in this vehicle's uploads
            (module docstring; ADR 0122).
        rare_mask: bits that ask for a clip only while the current condition is under-represented in the uploads
            (with ``value_weighting``).
        rarity_max: the rarity weight's cap [-] (its inverse is the floor).
        fog_visibility_m: own visibility estimate below this: the fog class [m] (the label stage's threshold).
        wet_friction: own friction estimate below this (and not fog): the wet class [-].
        known_frames: per class of ``CONDITION_NAMES``, frames counted as already uploaded (what the model learnt
            before) when the rarity is computed [frames].
        common_headroom_clips: with ``value_weighting``, a clip that is not severe, asked for in a condition that is
            not under-represented in the uploads (rarity at most 1), spends only what lies above the reserve and
            this many further clips [clips]: what the vehicle already knows waits for a bucket that would
            otherwise overflow, and the room for a rare-condition clip is never taken by it (ADR 0194).
    """

    pre_s: float = 2.0
    post_s: float = 3.0
    dt_s: float = 0.1
    hard_brake_mps2: float = 4.0
    near_miss_ttc_s: float = 1.0
    disagreement_mps2: float = 3.0
    high_uncertainty: float = 0.5
    sample_rate: float = 4e-5
    sample_clip_s: float = 5.0
    budget_fraction: float = 0.02
    bucket_frames: float = 150.0
    trigger_mask: int = (1 << 6) - 1
    severe_mask: int = 1 << 2
    reserve_clips: float = 1.0
    value_weighting: bool = False
    rare_mask: int = 0
    rarity_max: float = 4.0
    fog_visibility_m: float = 200.0
    wet_friction: float = 0.7
    known_frames: tuple[float, float, float] = (0.0, 0.0, 0.0)
    common_headroom_clips: float = 0.0

    @classmethod
    def valued(cls, **overrides: float) -> TriggerConfig:
        """Selection by what a clip would teach (ADR 0122, 0194): the safety triggers (fallback engaged, near miss
        with the reserve), model / fallback disagreement only in conditions rare in the uploads, and a
        rarity-weighted random sample drawn to fill the rest of the budget; hard braking and high uncertainty are
        recorded, not uploaded for themselves. Clips of conditions the uploads already cover wait for headroom
        (``common_headroom_clips``), and the random clip is as long as ten minutes' budget allows beside the reserve,
        so more of its frames get a complete hindsight label. ``overrides``: any other field (``dt_s``,
        ``budget_fraction``, ...)."""
        plain = cls(**overrides)  # type: ignore[arg-type]
        bits = TRIGGER_BITS
        # Ten minutes' budget is the advance (ADR 0121): the reserve's clip and one random clip of the rest. The
        # labeller's horizon (3 s) leaves the end of a clip as context only, so one longer clip labels more frames.
        ten_min = 600.0 / plain.dt_s * plain.budget_fraction
        sample_frames = max(plain.sample_ticks + 1, math.floor(ten_min - plain.reserve_frames))
        fields = {
            "trigger_mask": bits["fallback_engaged"] | bits["near_miss"] | bits["disagreement"] | bits["random_sample"],
            "rare_mask": bits["disagreement"],
            "value_weighting": True,
            "sample_clip_s": (sample_frames - 1) * plain.dt_s,
            # The clear-weather bootstrap already taught clear driving: one clip's worth of it counts as uploaded.
            "known_frames": (float(plain.clip_frames), 0.0, 0.0),
            "common_headroom_clips": 1.0,
        }
        fields.update({k: v for k, v in overrides.items() if k in fields})
        cfg = dataclasses.replace(plain, **fields)  # type: ignore[arg-type]
        return cfg if "sample_rate" in overrides else dataclasses.replace(cfg, sample_rate=cfg.fill_rate())

    def __post_init__(self) -> None:
        for name in (
            "pre_s",
            "post_s",
            "sample_rate",
            "sample_clip_s",
            "budget_fraction",
            "reserve_clips",
            "common_headroom_clips",
        ):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise FleetConfigError(f"TriggerConfig.{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not self.dt_s > 0 or not self.bucket_frames >= 1:
            raise FleetConfigError("TriggerConfig needs dt_s > 0 and bucket_frames >= 1")
        if not 0 <= self.trigger_mask < (1 << N_BITS):
            raise FleetConfigError(f"TriggerConfig.trigger_mask must be a set of the {N_BITS} trigger bits")
        if not (math.isfinite(self.rarity_max) and self.rarity_max >= 1.0):
            raise FleetConfigError(f"TriggerConfig.rarity_max must be a finite number >= 1, got {self.rarity_max}")
        if len(self.known_frames) != len(CONDITION_NAMES) or not all(
            math.isfinite(x) and x >= 0 for x in self.known_frames
        ):
            raise FleetConfigError(
                f"TriggerConfig.known_frames must be {len(CONDITION_NAMES)} finite numbers >= 0 (frames per class "
                f"of {', '.join(CONDITION_NAMES)}), got {self.known_frames}"
            )
        if not 0 <= self.rare_mask < (1 << (N_BITS - 1)):
            raise FleetConfigError(
                f"TriggerConfig.rare_mask must be a set of the {N_BITS - 1} trigger bits (not random)"
            )
        if not 0 <= self.severe_mask < (1 << (N_BITS - 1)):
            raise FleetConfigError(
                f"TriggerConfig.severe_mask must be a set of the {N_BITS - 1} trigger bits (not random)"
            )

    def fill_rate(self, share: float | None = None) -> float:
        """The ``sample_rate`` at which random clips of this config's length upload about ``share`` of the frames
        (default: the whole budget); ``RANDOM_OVERDRAW`` draws per clip paid, since a draw inside a clip already
        admitted adds nothing."""
        return RANDOM_OVERDRAW * (self.budget_fraction if share is None else share) / (self.sample_ticks + 1)

    @property
    def pre_ticks(self) -> int:
        return round(self.pre_s / self.dt_s)

    @property
    def post_ticks(self) -> int:
        return round(self.post_s / self.dt_s)

    @property
    def sample_ticks(self) -> int:
        """Frames after the sampled one in a random clip."""
        return round(self.sample_clip_s / self.dt_s)

    @property
    def clip_frames(self) -> int:
        """Frames of one trigger clip (before, the trigger moment, after)."""
        return self.pre_ticks + 1 + self.post_ticks

    @property
    def reserve_frames(self) -> float:
        """Tokens only the severe triggers may spend [frames]."""
        return self.reserve_clips * self.clip_frames

    @property
    def initial_frames(self) -> float:
        """Tokens a fresh bucket holds [frames]: one clip (trigger or random, the longer) above the reserve, and the
        reserve."""
        return max(self.clip_frames, self.sample_ticks + 1) + self.reserve_frames

    @property
    def headroom_frames(self) -> float:
        """Tokens a clip of a well-covered condition leaves beside the reserve (``common_headroom_clips``) [frames]."""
        return self.common_headroom_clips * self.clip_frames if self.value_weighting else 0.0

    @property
    def advance_ticks(self) -> float:
        """Ticks a vehicle drives to earn its starting tokens [ticks]; the bucket refills only after them, so a run
        at least this long uploads at most ``budget_fraction`` of its frames (ADR 0121)."""
        return self.initial_frames / self.budget_fraction if self.budget_fraction > 0 else math.inf

    @property
    def capacity_frames(self) -> float:
        """Token bucket capacity [frames]: at least one whole clip (or random clip) above the reserve and the
        headroom, so every clip can be admitted once the bucket is full."""
        clip = max(self.clip_frames, self.sample_ticks + 1)
        return max(self.bucket_frames, self.initial_frames, clip + self.reserve_frames + self.headroom_frames)


@dataclass(frozen=True)
class TriggerInputs:
    """One tick of vehicle-known signals, tensors [B]."""

    fallback_started: torch.Tensor
    ego_accel_mps2: torch.Tensor
    perceived_ttc_s: torch.Tensor
    model_accel_mps2: torch.Tensor
    fallback_accel_mps2: torch.Tensor
    model_valid: torch.Tensor
    uncertainty: torch.Tensor
    visibility_m: torch.Tensor | None = None
    """The vehicle's own visibility estimate [m] (value weighting; None: clear)."""
    friction: torch.Tensor | None = None
    """The vehicle's own friction estimate [-] (value weighting; None: dry)."""


def condition_classes(cfg: TriggerConfig, inp: TriggerInputs) -> torch.Tensor:
    """[B] int64 index into ``CONDITION_NAMES`` of the vehicle's own estimate: fog, else wet, else clear."""
    b, dev = inp.ego_accel_mps2.shape[0], inp.ego_accel_mps2.device
    code = torch.zeros(b, dtype=torch.int64, device=dev)
    if inp.friction is not None:
        code = torch.where(inp.friction < cfg.wet_friction, torch.full_like(code, 2), code)
    if inp.visibility_m is not None:
        code = torch.where(inp.visibility_m < cfg.fog_visibility_m, torch.full_like(code, 1), code)
    return code


@dataclass(frozen=True)
class TriggerState:
    """Per vehicle: the last tick each trigger bit fired (the random bit: the last sampled frame) [B, N_BITS],
    bucket tokens [B], the last frame of the admitted clips [B], counters [B, N_BITS] by primary reason: frames
    uploaded and frames wanted but refused, clips admitted and clips refused; plus frames decided [B]; frames driven
    and frames uploaded per condition class of the vehicle's estimate [B, len(CONDITION_NAMES)] (value weighting)."""

    last_fired: torch.Tensor
    tokens: torch.Tensor
    clip_until: torch.Tensor
    uploaded: torch.Tensor
    refused: torch.Tensor
    clips: torch.Tensor
    clips_refused: torch.Tensor
    decided: torch.Tensor
    class_driven: torch.Tensor
    class_uploaded: torch.Tensor

    @staticmethod
    def init(batch: int, device: torch.device | str = "cpu", cfg: TriggerConfig | None = None) -> TriggerState:
        """A fresh state for ``batch`` vehicles: the bucket holds ``cfg.initial_frames`` (default config)."""
        cfg = cfg or TriggerConfig()
        zb = torch.zeros(batch, N_BITS, dtype=torch.int64, device=device)
        return TriggerState(
            last_fired=torch.full((batch, N_BITS), _NEVER, dtype=torch.int64, device=device),
            tokens=torch.full((batch,), float(cfg.initial_frames), dtype=torch.float64, device=device),
            clip_until=torch.full((batch,), _NEVER, dtype=torch.int64, device=device),
            uploaded=zb,
            refused=zb.clone(),
            clips=zb.clone(),
            clips_refused=zb.clone(),
            decided=torch.zeros(batch, dtype=torch.int64, device=device),
            class_driven=torch.zeros(batch, len(CONDITION_NAMES), dtype=torch.int64, device=device),
            class_uploaded=torch.zeros(batch, len(CONDITION_NAMES), dtype=torch.int64, device=device),
        )

    def totals(self) -> dict[str, dict[str, int]]:
        """Fleet totals per primary reason: frames uploaded and refused, clips uploaded and refused; frames decided."""
        names = list(TRIGGER_BITS)

        def per(t: torch.Tensor) -> dict[str, int]:
            return dict(zip(names, t.sum(0).tolist(), strict=True))

        return {
            "uploaded": per(self.uploaded),
            "refused_by_budget": per(self.refused),
            "clips_uploaded": per(self.clips),
            "clips_refused_by_budget": per(self.clips_refused),
            "decided": {"frames": int(self.decided.sum())},
            "uploaded_by_condition": dict(zip(CONDITION_NAMES, self.class_uploaded.sum(0).tolist(), strict=True)),
        }


@dataclass(frozen=True)
class UploadDecision:
    """Decision for frame ``frame_tick`` of every vehicle (no frame when negative), tensors [B].

    ``upload``: send it; ``bits``: uint16-valued trigger bits covering it (int32 tensor; why it was wanted);
    ``refused``: wanted but over budget (stays in the buffer). ``current_bits``: bits that fired at this tick
    itself (to store with the current frame in the buffer).
    """

    frame_tick: int
    upload: torch.Tensor
    bits: torch.Tensor
    refused: torch.Tensor
    current_bits: torch.Tensor


def trigger_bits(cfg: TriggerConfig, inp: TriggerInputs) -> torch.Tensor:
    """The trigger bits [B] (int32) that fire on this tick's signals (without the random sample)."""
    decel = -torch.nan_to_num(inp.ego_accel_mps2.float())
    model_ok = inp.model_valid.bool() & torch.isfinite(inp.model_accel_mps2)
    diff = (torch.nan_to_num(inp.model_accel_mps2.float()) - inp.fallback_accel_mps2.float()).abs()
    unc = torch.nan_to_num(inp.uncertainty.float(), nan=0.0)
    flags = (
        inp.fallback_started.bool(),
        decel > cfg.hard_brake_mps2,
        torch.nan_to_num(inp.perceived_ttc_s.float(), nan=math.inf) < cfg.near_miss_ttc_s,
        model_ok & (diff > cfg.disagreement_mps2),
        model_ok & (unc > cfg.high_uncertainty),
    )
    bits = torch.zeros(decel.shape, dtype=torch.int32, device=decel.device)
    for i, flag in enumerate(flags):
        bits = bits | (flag.to(torch.int32) << i)
    return bits


def _admit(
    want: torch.Tensor,
    end: torch.Tensor,
    start: torch.Tensor,
    until: torch.Tensor,
    tokens: torch.Tensor,
    reserve: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Admit the clips [start, end] where ``want``, all or nothing: each pays for the frames it adds to the admitted
    interval ending at ``until``, from the tokens above ``reserve``. Returns (admitted, new until, new tokens)."""
    cost = (end - torch.clamp(until, min=start - 1)).clamp(min=0).to(tokens.dtype)
    admitted = want & (tokens - reserve >= cost)
    return admitted, torch.where(admitted, torch.maximum(until, end), until), tokens - cost * admitted


def triggers_step(
    cfg: TriggerConfig,
    state: TriggerState,
    inp: TriggerInputs,
    vehicle_ids: torch.Tensor,
    tick: int,
    seed: int,
    *,
    now_bits: torch.Tensor | None = None,
    compiled: bool = False,
) -> tuple[TriggerState, UploadDecision]:
    """Record this tick's triggers, admit or refuse the clips they ask for, and decide frame ``tick - pre_ticks``.

    ``now_bits``: ``trigger_bits(cfg, inp)`` when the caller has it already (the compiled tick computes it in its
    graph). ``compiled``: the decision runs as a ``torch.compile``d graph (ADR 0101), the tick as a tensor (one
    graph for every tick but the first decided one); the same integers as eager."""
    if now_bits is None:
        now_bits = trigger_bits(cfg, inp)
    cond = condition_classes(cfg, inp)
    dev = now_bits.device
    f = tick - cfg.pre_ticks
    tick_t = torch.tensor(tick, dtype=torch.int64, device=dev)
    if f < 0:
        # Clips of the run's first ticks are cut at frame 0; they are decided (and paid for) from tick pre_ticks on.
        _, last, tokens = _record(cfg, state, now_bits, tick_t)
        none = torch.zeros(now_bits.shape[0], dtype=torch.bool, device=dev)
        driven = _count_class(state.class_driven, cond, torch.ones_like(none))
        new = dataclasses.replace(state, last_fired=last, tokens=tokens, class_driven=driven)
        return new, UploadDecision(f, none, torch.zeros_like(now_bits), none, now_bits)
    # The random sample's key: vehicle_keys caches its tick-independent part per vehicle-id tensor.
    base = rng.base_keys(seed, vehicle_ids, (_STREAM_SAMPLE,))
    decide = compile_graph(_decide) if compiled else _decide
    new, upload, bits, refused = decide(cfg, state, now_bits, base, tick_t, f == 0, cond)
    return new, UploadDecision(f, upload, bits, refused, now_bits)


def _record(
    cfg: TriggerConfig, state: TriggerState, now_bits: torch.Tensor, tick: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every tick's bookkeeping: the bits that fired [B, N_BITS], the last tick each fired (``tick`` a 0-d int64
    tensor) and the bucket refilled. Returns (fired, last_fired, tokens).

    The refill repays the starting tokens first (ADR 0121): what ticks 0..tick earned, ``budget_fraction`` x
    (tick + 1), less the advance, is what reaches the bucket, one tick's share at a time."""
    shifts = torch.arange(N_BITS, device=now_bits.device)
    fired = ((now_bits.unsqueeze(-1) >> shifts) & 1).bool()
    last = torch.where(fired, tick, state.last_fired)
    earned = (tick + 1).to(state.tokens.dtype) * cfg.budget_fraction - cfg.initial_frames
    refill = earned.clamp(min=0.0, max=cfg.budget_fraction)
    return fired, last, (state.tokens + refill).clamp(max=cfg.capacity_frames)


def _count_class(counts: torch.Tensor, cond: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """``counts`` [B, C] plus one in column ``cond`` [B] of the rows ``where`` [B] (bool)."""
    return counts + torch.nn.functional.one_hot(cond, counts.shape[-1]) * where.unsqueeze(-1)


def _rarity(cfg: TriggerConfig, driven: torch.Tensor, uploaded: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """[B] the current condition's share of the frames driven over its share of the frames uploaded (with
    ``known_frames``), clamped to [1 / rarity_max, rarity_max] (1 while nothing counts as uploaded)."""
    pick = cond.unsqueeze(-1)
    d = driven.gather(-1, pick).squeeze(-1).double() / driven.sum(-1).clamp(min=1).double()
    up = uploaded.double() + torch.tensor(cfg.known_frames, dtype=torch.float64, device=uploaded.device)
    u_total = up.sum(-1)
    u = up.gather(-1, pick).squeeze(-1) / u_total.clamp(min=1.0)
    r = torch.where(u_total > 0, d / u.clamp(min=1e-9), torch.ones_like(d))
    return r.clamp(min=1.0 / cfg.rarity_max, max=cfg.rarity_max)


def _decide(
    cfg: TriggerConfig,
    state: TriggerState,
    now_bits: torch.Tensor,
    base: torch.Tensor,
    tick: torch.Tensor,
    first: bool,
    cond: torch.Tensor,
) -> tuple[TriggerState, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``triggers_step`` from the first decided frame on: ``base`` the sample stream's base keys [B, 1], ``tick`` a
    0-d int64 tensor, ``first``: frame 0 is being decided, ``cond`` the condition class now [B]. Returns (state,
    upload, bits, refused)."""
    shifts = torch.arange(N_BITS, device=now_bits.device)
    fired, last, tokens = _record(cfg, state, now_bits, tick)
    driven = _count_class(state.class_driven, cond, torch.ones_like(cond, dtype=torch.bool))
    rarity = _rarity(cfg, driven, state.class_uploaded, cond)
    f = tick - cfg.pre_ticks
    until = state.clip_until
    one_hot = torch.nn.functional.one_hot
    # Trigger clips asked for at this tick, or, on the first decided frame, at any earlier tick that covers it.
    live = (last[:, : N_BITS - 1] >= f - cfg.post_ticks) & first | fired[:, : N_BITS - 1]
    live = live & ((cfg.trigger_mask >> shifts[: N_BITS - 1]) & 1).bool()
    if cfg.value_weighting:
        # The rare bits ask only while the condition is under-represented in this vehicle's uploads.
        rare = ((cfg.rare_mask >> shifts[: N_BITS - 1]) & 1).bool()
        live = live & (~rare | (rarity > 1.0).unsqueeze(-1))
    want_t = live.any(-1)
    end_t = torch.where(fired[:, : N_BITS - 1].any(-1), tick, last[:, : N_BITS - 1].max(-1).values) + cfg.post_ticks
    severe = (live & ((cfg.severe_mask >> shifts[: N_BITS - 1]) & 1).bool()).any(-1)
    # What a clip must leave in the bucket: nothing (severe), the reserve, or with value weighting in a condition
    # the uploads already cover, the reserve and the headroom (ADR 0194).
    keep = cfg.reserve_frames + torch.where(rarity > 1.0, 0.0, cfg.headroom_frames).to(tokens.dtype)
    reserve_t = torch.where(severe, 0.0, keep).to(tokens.dtype)
    ok_t, until, tokens = _admit(want_t, end_t, f, until, tokens, reserve_t)
    reason_t = one_hot(live.to(torch.int64).argmax(-1), N_BITS) * want_t.unsqueeze(-1)
    # The random sample: frame f starts a random clip [f, f + sample_ticks].
    key = rng.tick_keys(base, f.to(torch.int32))[:, 0]  # = vehicle_keys(seed, ids, f, stream): f >= 0 fits int32
    u = rng.uniform(key, (1,)).squeeze(-1)
    sample = u < (cfg.sample_rate * rarity).to(u.dtype) if cfg.value_weighting else u < cfg.sample_rate
    sample = sample & bool((cfg.trigger_mask >> (N_BITS - 1)) & 1)
    last[:, N_BITS - 1] = torch.where(sample, f, last[:, N_BITS - 1])
    end_s = torch.zeros_like(until) + (f + cfg.sample_ticks)
    ok_s, until, tokens = _admit(sample, end_s, f, until, tokens, keep)
    reason_s = one_hot(torch.full_like(until, N_BITS - 1), N_BITS) * sample.unsqueeze(-1)
    # Why frame f was wanted: the trigger clips [t - pre, t + post] and random clips [s, s + sample] that cover it.
    covered = last >= f - cfg.post_ticks
    covered[:, N_BITS - 1] = last[:, N_BITS - 1] >= f - cfg.sample_ticks
    covered = covered & ((cfg.trigger_mask >> shifts) & 1).bool()
    bits = (covered.to(torch.int32) << shifts.to(torch.int32)).sum(-1, dtype=torch.int32)
    upload = until >= f
    wanted = bits > 0
    refused = wanted & ~upload
    primary = one_hot(covered.to(torch.int64).argmax(-1), N_BITS)
    new = TriggerState(
        last_fired=last,
        tokens=tokens,
        clip_until=until,
        uploaded=state.uploaded + primary * (upload & wanted).unsqueeze(-1),
        refused=state.refused + primary * refused.unsqueeze(-1),
        clips=state.clips + reason_t * ok_t.unsqueeze(-1) + reason_s * ok_s.unsqueeze(-1),
        clips_refused=state.clips_refused
        + reason_t * (want_t & ~ok_t).unsqueeze(-1)
        + reason_s * (sample & ~ok_s).unsqueeze(-1),
        decided=state.decided + 1,
        class_driven=driven,
        class_uploaded=_count_class(state.class_uploaded, cond, upload),
    )
    return new, upload, bits, refused


def upload_policy(name: str, budget_fraction: float = 0.02, dt_s: float = 0.1) -> TriggerConfig:
    """The vehicles' upload selection by name (``sim run --uploads``): ``triggers`` (every trigger, first come first
    served above the near-miss reserve), ``valued`` (``TriggerConfig.valued``: what a clip would teach, ADR 0122 and
    0194) or ``random`` (only the unbiased random sample, drawn to fill the budget; no reserve), under the budget
    ``budget_fraction`` (share of frames) at the world's tick ``dt_s``."""
    if name not in UPLOAD_POLICIES:
        raise FleetConfigError(f"unknown upload policy {name!r}; valid: {', '.join(UPLOAD_POLICIES)}")
    if not (math.isfinite(budget_fraction) and 0.0 < budget_fraction <= 1.0):
        raise FleetConfigError(f"the upload budget is a share of frames in (0, 1], got {budget_fraction}")
    if name == "valued":
        return TriggerConfig.valued(dt_s=dt_s, budget_fraction=budget_fraction)
    base = TriggerConfig(dt_s=dt_s, budget_fraction=budget_fraction)
    if name == "triggers":
        return base
    return dataclasses.replace(
        base,
        trigger_mask=TRIGGER_BITS["random_sample"],
        sample_rate=base.fill_rate(),
        reserve_clips=0.0,  # no severe trigger asks for the reserve: the whole bucket is the sample's
    )
