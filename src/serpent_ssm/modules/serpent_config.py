"""The options of the SeRpEnt mixer: ``SeRpEntOptions`` (what a model config holds under
``model.serpent``) and ``SeRpEntConfig`` (those options plus width, backbone and mode: everything
one ``SeRpEnt`` needs), both checked on construction by the same coercion as the run config.

Options left at None depend on the mode and are resolved in one place, ``resolve_options``:
``restore`` ("hold" causal, "interp" otherwise), ``include_full_branch`` (True causal, False
otherwise), ``bidirectional`` (``not causal``) and ``init`` ("backbone" causal with the full
branch, "identity" otherwise). Both modes default to the lean shared mixer (``share_backbone``
True, ``mix`` "gates", ``cell_proj`` False), chosen by the long runs (docs/design.md, "Does
SeRpEnt help?").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from serpent_ssm.modules.backbones import BACKBONES
from serpent_ssm.ops.resample import RESTORES
from serpent_ssm.utils.config import check_fields, to_mapping

__all__ = [
    "AGGREGATES",
    "INITS",
    "INTERVAL_BOUNDS",
    "INTERVAL_SOURCES",
    "MIXES",
    "SeRpEntConfig",
    "SeRpEntOptions",
    "resolve_options",
]

AGGREGATES = ("linear", "kernel", "cell")
INTERVAL_BOUNDS = ("ours", "paper", "fixed", "mean")
INTERVAL_SOURCES = ("score", "backbone")
INITS = ("identity", "default", "backbone")
MIXES = ("dense", "gates")
RATES = "a list of rates in (0, 1]"


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


@dataclass(kw_only=True)
class SeRpEntOptions:
    """Every option of the SeRpEnt mixer that a model config sets (``model.serpent``).

    Attributes:
        rates: compression rates ``κ_r`` in ``(0, 1]``, one branch each [paper: 0.5, 0.3, 0.2].
        window: ``K`` elements aggregated per grid point [paper: 3].
        n_bases: ``M`` Gaussian bases of the time offsets [ours: 16].
        aggregate: ``"cell"`` [ours, default]: every element pooled into the grid cells its
            interval overlaps, weighted by the overlap (``ops.resample.cell_pool``; no element
            is dropped; ``window`` and ``n_bases`` unused); ``"linear"`` [paper's figure]: one
            linear map of the window of ``K`` elements and their RBF time features; ``"kernel"``
            [ours]: a continuous filter over that window. ``"cell"`` is the default because it
            learns where the figure's design does not (docs/design.md, learning parity).
        restore: ``"hold"``, ``"interp"`` or ``"scatter"``; None = ``"hold"`` when causal,
            ``"interp"`` otherwise. ``"interp"`` reads the next grid point, so it is refused in
            causal mode.
        interval_bounds: how a score ``s_l`` becomes an interval: ``"ours"``
            (``Δ = 2κ·σ(s) ∈ (0, 2κ)``), ``"paper"`` (``Δ ∈ [κ, 1]``), ``"fixed"`` (``Δ ≡ κ``, no
            learned intervals; for ablations and the identity limit) or ``"mean"``
            (``Δ_l = min(2κ, κ·e^{s_l} / mean_j e^{s_j})``, the mean over the prefix in causal
            mode: the mean interval stays near ``κ``, so a causal branch keeps about ``κ·n``
            grid points; ``ops.resample.mean_normalised_intervals``). In non-causal mode the
            times are rescaled to ``ceil(κ·n)`` grid points whatever the bounds.
        interval_source: where the scores come from: ``"score"`` (a linear map of the input,
            ``s_l = w·x_l + b``) or ``"backbone"`` (the backbone's own selectivity: ``s_l = log``
            of the mean over channels of Mamba's ``Δ = softplus(dt)`` at ``l``, both directions
            when bidirectional; the paper's link between selectivity and information; needs a
            backbone with selective intervals, such as ``"mamba"``). With ``share_intervals``
            the scores come from branch 0's backbone, otherwise each branch uses its own.
        share_intervals: one score network for all branches [ours] or one per branch.
        include_full_branch: add a ``κ = 1`` branch, the plain backbone on the full sequence;
            None = True when causal, False otherwise [ours, from the ablations: without it a
            causal LM learns only what the current element alone predicts, because ``"hold"``
            refreshes a position's branch outputs only when a grid point falls on it;
            docs/design.md, "Ablations and defaults"].
        gate: multiply the output by a per-position gate ``2σ(W_g x_l + b_g)`` [ours]: a path
            from each element to its own output that does not wait for a grid point (in causal
            mode ``"hold"`` gives position ``l`` the output of the latest grid point, computed
            before ``l`` unless ``l`` crossed it); ablated in docs/design.md, off by default.
        bidirectional: wrap each backbone in ``Bidirectional``; None = ``not causal``.
        init: ``"identity"`` (the aggregation passes the selected element through, the output
            averages the branches and the gate starts at 1, so the mixer starts close to its
            backbone), ``"backbone"`` (as ``"identity"``, but the output map passes the full
            branch alone and the compressed branches start at zero weight: the mixer starts
            *equal* to its backbone; needs ``include_full_branch``) or ``"default"``
            (PyTorch's default initialisation everywhere). None = ``"backbone"`` when causal with
            the full branch, ``"identity"`` otherwise.
        share_backbone: every branch, the full branch included, runs one backbone (one set of
            weights) [ours, default]: a SeRpEnt mixer then has about one backbone's parameters,
            so at a matched parameter count it is as wide as its backbone. Each branch keeps its
            own recurrent state when streaming. With ``mix`` and ``cell_proj`` below: the lean
            shared mixer, the default of both modes, chosen by the long runs (docs/design.md,
            "Does SeRpEnt help?"); False gives each branch its own backbone.
        mix: how the branch outputs combine: ``"dense"`` (one ``Linear(n·D -> D)`` over their
            concatenation) or ``"gates"`` [ours, default]: a learned weight per branch and
            channel and a bias, ``y = Σ_b g_b ⊙ ŷ_b + c`` (``n·D + D`` parameters instead of
            ``n·D² + D``).
        cell_proj: the ``D -> D`` map after cell pooling (``aggregate="cell"``); False [default]:
            none, the pooled input goes to the backbone as it is (whose input projection follows
            anyway). With ``share_backbone``, ``mix="gates"`` and ``cell_proj=False`` a SeRpEnt
            mixer has its backbone's parameters plus ``O(D)``: as wide as its backbone at a
            matched count.
        layers: the layers of a model's stack (0-based) that get the SeRpEnt mixer; the others get
            the plain backbone (bidirectional when non-causal), as hourglass and dynamic-pooling
            models keep full resolution at both ends. None = every layer. A model option: one
            mixer ignores it.
        trim_buffer: cut each compressed buffer to the batch's largest count instead of its
            static bound (``ceil(2κL)`` in causal mode, twice the usual count): the backbones
            then process about ``Σκ·L`` elements instead of ``2Σκ·L``. Outputs are the same;
            shapes become data-dependent (set False for static shapes, e.g. for export).
    """

    rates: tuple[float, ...] = field(default=(0.5, 0.3, 0.2), metadata={"expected": RATES})
    window: int = 3
    n_bases: int = 16
    aggregate: str = "cell"
    restore: str | None = None
    interval_bounds: str = "ours"
    interval_source: str = "score"
    share_intervals: bool = True
    include_full_branch: bool | None = None
    gate: bool = False
    bidirectional: bool | None = None
    init: str | None = None
    trim_buffer: bool = True
    share_backbone: bool = True
    mix: str = "gates"
    cell_proj: bool = False
    layers: tuple[int, ...] | None = field(default=None, metadata={"expected": "a list of layer indices"})

    def __post_init__(self) -> None:
        check_fields(self)
        if len(self.rates) == 0:
            raise ValueError(f"rates: expected a non-empty {RATES.removeprefix('a ')}, got ()")
        for r in self.rates:
            if not 0.0 < r <= 1.0:
                raise ValueError(f"rates: expected every rate in (0, 1], got {r!r} in {self.rates}")
        for name in ("window", "n_bases"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {getattr(self, name)!r}")
        _check_choice("aggregate", self.aggregate, AGGREGATES)
        if self.restore is not None:
            _check_choice("restore", self.restore, RESTORES)
        _check_choice("interval_bounds", self.interval_bounds, INTERVAL_BOUNDS)
        _check_choice("interval_source", self.interval_source, INTERVAL_SOURCES)
        if self.init is not None:
            _check_choice("init", self.init, INITS)
        _check_choice("mix", self.mix, MIXES)
        if self.layers is not None:
            if (
                not self.layers
                or any(i < 0 for i in self.layers)
                or len(set(self.layers)) != len(self.layers)
            ):
                raise ValueError(
                    "layers: expected distinct layer indices >= 0 (or null for every layer), "
                    f"got {list(self.layers)}"
                )

    def delta_max(self, rate: float) -> float:
        """Upper bound of the intervals of a branch with rate ``rate``."""
        return {"ours": 2.0 * rate, "paper": 1.0, "fixed": rate, "mean": 2.0 * rate}[self.interval_bounds]

    def options(self) -> SeRpEntOptions:
        """These options alone (a ``SeRpEntConfig`` without width, backbone and mode)."""
        names = [f.name for f in dataclasses.fields(SeRpEntOptions)]
        return SeRpEntOptions(**{n: getattr(self, n) for n in names})


def _mode_defaults(options: SeRpEntOptions, causal: bool) -> dict[str, Any]:
    """The mode-dependent options of ``options`` for ``causal``, resolved and checked."""
    values = {
        "restore": options.restore if options.restore is not None else ("hold" if causal else "interp"),
        "include_full_branch": (
            options.include_full_branch if options.include_full_branch is not None else causal
        ),
        "bidirectional": options.bidirectional if options.bidirectional is not None else not causal,
    }
    # a causal mixer with the full branch starts as its backbone (docs/design.md, "Does SeRpEnt help?")
    values["init"] = options.init or ("backbone" if causal and values["include_full_branch"] else "identity")
    if causal and values["restore"] == "interp":
        raise ValueError(
            "restore: expected 'hold' or 'scatter' in causal mode, got 'interp' "
            "(it reads the next grid point, which lies in the future)"
        )
    if causal and values["bidirectional"]:
        raise ValueError("bidirectional: expected False in causal mode, got True (it would read the future)")
    if values["init"] == "backbone" and not values["include_full_branch"]:
        raise ValueError(
            "init: expected 'identity' or 'default' without the full branch, got 'backbone' "
            "(it starts the mixer as its full branch; set include_full_branch=true)"
        )
    return values


def resolve_options(options: SeRpEntOptions, causal: bool) -> SeRpEntOptions:
    """``options`` (as ``SeRpEntOptions``) with the mode-dependent defaults filled in and checked
    against the mode."""
    return dataclasses.replace(options.options(), **_mode_defaults(options, causal))


@dataclass
class SeRpEntConfig(SeRpEntOptions):
    """Everything one ``SeRpEnt`` mixer needs: the options (``SeRpEntOptions``, resolved for the
    mode on construction) plus

    Attributes:
        d_model: width ``D``.
        backbone: ``"mamba"``, ``"s4d"``, or a factory ``() -> mixer`` following the mixer
            protocol (``modules.protocol``).
        backbone_kwargs: keyword arguments of the named backbone (besides ``d_model``).
        causal: causal (language modelling, streaming) or non-causal (classification).
    """

    d_model: int
    backbone: str | Callable[[], nn.Module] = "mamba"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    causal: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d_model < 1:
            raise ValueError(f"d_model: expected a positive integer, got {self.d_model!r}")
        if isinstance(self.backbone, str):
            if self.backbone not in BACKBONES:
                names = ", ".join(map(repr, BACKBONES))
                raise ValueError(f"backbone: expected one of {names} or a factory, got {self.backbone!r}")
        elif not callable(self.backbone):
            raise ValueError(
                f"backbone: expected a name or a callable factory, got {type(self.backbone).__name__}"
            )
        if self.interval_source == "backbone" and self.backbone == "s4d":
            raise ValueError(
                "interval_source: expected 'score' with backbone 's4d' (its Δ does not depend on "
                "the input), got 'backbone'"
            )
        for key, value in _mode_defaults(self, self.causal).items():
            setattr(self, key, value)

    @classmethod
    def from_options(
        cls,
        d_model: int,
        backbone: str | Callable[[], nn.Module],
        options: SeRpEntOptions,
        causal: bool,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> SeRpEntConfig:
        """The config of one mixer from a model's ``SeRpEntOptions``."""
        values = {f.name: getattr(options, f.name) for f in dataclasses.fields(SeRpEntOptions)}
        return cls(d_model, backbone, dict(backbone_kwargs or {}), causal, **values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (a factory backbone is shown by its name)."""
        d = to_mapping(self)
        if not isinstance(self.backbone, str):
            d["backbone"] = getattr(self.backbone, "__name__", repr(self.backbone))
        return d
