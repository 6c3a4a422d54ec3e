"""The factorized weight W = U Σ Vᵀ at the heart of OIALR.

U (m×r) and Vᵀ (r×n) are frozen buffers with orthonormal columns/rows; Σ (r×r) is a full square
trainable matrix. Layers (``_layers.py``) own one or more factors and decide how to apply them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Force a forward path for every factor: None (cost model), "dense" or "factorized". Used by the
# benchmark and the tests to compare both paths; users never need it.
FORWARD_MODES = (None, "dense", "factorized")


@dataclass(frozen=True)
class Rotation:
    """The result of one basis update of a factor (see :meth:`LowRankWeight.rotate_`).

    ``left`` (r×k) and ``right`` (r×k) map the old Σ onto the new one: Σ' = leftᵀ Σ right.
    ``stability`` is the paper's (eq. 4, normalized by the old rank r); ``alignment`` is the same trace
    normalized by the new rank k: how far the directions that were kept moved, 1 when not at all.
    """

    old_rank: int
    new_rank: int
    stability: float
    left: Tensor
    right: Tensor
    alignment: float = 1.0


class LowRankWeight(nn.Module):
    """A weight matrix W (m×n) kept as U Σ Vᵀ; only Σ trains.

    Built from the dense weight by a compact SVD, so at construction U Σ Vᵀ equals W to float
    precision and Σ = diag(s).
    """

    forward_mode: str | None = None
    # Force where Σ goes in the factorized product: None (the cost rule of ``sigma_apart``), "apart" or
    # "merged". For the benchmarks, which time both side by side; users never need it.
    sigma_placement: str | None = None
    # The factorized product's inner dimension (the rank) is zero-padded to a multiple of ``align``:
    # None means 8 on CUDA devices, where a bf16/fp16/tf32 GEMM with an inner dimension that is not a
    # multiple of 8 falls off the tensor-core kernels (measured on an H100: rank 39 and 77 of a
    # 768x3072 layer ran as slowly as the dense product), and 1 (none) elsewhere. Zeros change nothing.
    # The padding is made anew in every forward (a Σ and a basis pad, both small against the
    # activations): a cached copy would have to follow every change of the bases, inference tensors
    # and torch.compile's graphs.
    align: int | None = None

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"LowRankWeight needs a 2-D weight, got shape {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        with torch.no_grad():
            w = weight.detach()
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
        self.register_buffer("U", u.contiguous())
        self.register_buffer("Vh", vh.contiguous())
        self.sigma = nn.Parameter(torch.diag(s).contiguous())

    # -- shape and cost --------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.sigma.shape[0]

    @property
    def full_rank(self) -> int:
        return min(self.out_features, self.in_features)

    def use_factorized(self, tokens: int, *, align: int = 1) -> bool:
        """Whether x → Vᵀ → Σ → U is cheaper than materializing W for ``tokens`` input rows.

        Per forward, the dense path costs tokens·m·n + m·n·r (building W), the factorized path
        tokens·r'·(m+n), r' the rank padded to a multiple of ``align``. Σ's own share (merged into one
        side, or applied apart: see :meth:`sigma_apart`) is left out: at most tokens·r'·min(m, n) in
        the backward, small against both where the two are close. The backward's two products per side
        have the same proportions.
        """
        if self.forward_mode is not None:
            return self.forward_mode == "factorized"
        m, n, r = self.out_features, self.in_features, self.rank
        return tokens * self.padded_rank(align) * (m + n) < m * n * (tokens + r)

    def sigma_apart(self, align: int = 1, *, backward: bool = True) -> bool:
        """Whether a linear layer's factorized product applies Σ apart, between the bases (x → Vᵀ → Σ →
        U, three products), rather than merged into the narrower side (two). The backward of a merged
        side multiplies over all tokens at that side's full width w = min(m, n) (tokens·r'·w, and on a
        GPU one more pass over a full-width activation); Σ apart costs three tokens·r'² products instead
        (its forward and its two gradients), all of them r' wide. So it is cheaper when 3·r' < w and the
        backward runs (``backward``); without it, Σ apart only adds its forward product."""
        if self.sigma_placement is not None:
            if self.sigma_placement not in ("apart", "merged"):
                raise ValueError(f"LowRankWeight.sigma_placement must be None, 'apart' or 'merged', "
                                 f"got {self.sigma_placement!r}")
            return self.sigma_placement == "apart"
        return backward and 3 * self.padded_rank(align) < min(self.out_features, self.in_features)

    def padded_rank(self, align: int) -> int:
        """The rank rounded up to a multiple of ``align``: the factorized product's inner dimension."""
        return -(-self.rank // align) * align

    def alignment(self, device: torch.device) -> int:
        """The multiple the factorized product pads the rank to on ``device`` (see ``align``)."""
        align = self.align if self.align is not None else (8 if device.type == "cuda" else 1)
        if isinstance(align, bool) or not isinstance(align, int) or align < 1:
            raise ValueError(f"LowRankWeight.align must be a positive integer or None, got {align!r}")
        return align

    # -- products --------------------------------------------------------------------------------
    def split(self) -> tuple[Tensor, Tensor]:
        """(left m×r, right r×n) with left @ right = W; Σ is merged into the cheaper side."""
        if self.out_features <= self.in_features:
            return self.U @ self.sigma, self.Vh
        return self.U, self.sigma @ self.Vh

    def materialize(self) -> Tensor:
        left, right = self.split()
        return left @ right

    def aligned_split(self, align: int) -> tuple[Tensor, Tensor]:
        """:meth:`split` with the rank padded by zeros to a multiple of ``align``: zero columns on the
        left, zero rows on the right, so the product and every gradient are unchanged."""
        pad = self.padded_rank(align) - self.rank
        # Under torch.compile the rank is symbolic (train.compile marks it dynamic): a branch on whether
        # it is a multiple of ``align`` would be a guard, and a recompile at most basis updates
        if align == 1 or not torch.compiler.is_compiling() and not pad:
            return self.split()
        if self.out_features <= self.in_features:
            return self.U @ F.pad(self.sigma, (0, pad)), F.pad(self.Vh, (0, 0, 0, pad))
        return F.pad(self.U, (0, pad)), F.pad(self.sigma, (0, 0, 0, pad)) @ self.Vh

    def aligned_factors(self, align: int) -> tuple[Tensor, Tensor, Tensor]:
        """(U, Σ, Vᵀ) with the rank padded by zeros to a multiple of ``align`` (as :meth:`aligned_split`)."""
        pad = self.padded_rank(align) - self.rank
        if align == 1 or not torch.compiler.is_compiling() and not pad:
            return self.U, self.sigma, self.Vh
        return F.pad(self.U, (0, pad)), F.pad(self.sigma, (0, pad, 0, pad)), F.pad(self.Vh, (0, 0, 0, pad))

    def linear(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """``F.linear(x, W, bias)`` by the cheapest path: W built (dense), or the factorized product with Σ
        merged into one side or apart (:meth:`use_factorized`, :meth:`sigma_apart`)."""
        tokens = x.numel() // self.in_features if x.numel() else 0
        align = self.alignment(x.device)
        if self.use_factorized(tokens, align=align):
            if self.sigma_apart(align, backward=torch.is_grad_enabled() and self.sigma.requires_grad):
                u, sigma, vh = self.aligned_factors(align)
                return F.linear(F.linear(F.linear(x, vh), sigma), u, bias)
            left, right = self.aligned_split(align)
            return F.linear(F.linear(x, right), left, bias)
        return F.linear(x, self.materialize(), bias)

    # -- OIALR basis update ------------------------------------------------------------------------
    @torch.no_grad()
    def rotate_(self, beta: float, min_rank: int = 1) -> Rotation:
        """Re-diagonalize Σ, rotate the bases into its singular vectors and drop small values. Σ becomes a
        new Parameter: an optimizer that trains the old one must take it in its place (``replace_parameter``;
        hooks and attributes set on the old one do not carry over).

        Σ = P diag(σ) Qᵀ; U ← U P; Vᵀ ← Qᵀ Vᵀ; Σ ← diag(σ): the layer's function is unchanged. Then
        every σᵢ < beta·max(σ) is dropped (never fewer than ``min_rank``, never more than before).

        Stability (paper eq. 4) compares the orthogonal factor U Vᵀ with the one left by the
        previous update. After every rotation U Vᵀ *is* the polar factor of W, and the bases have
        not moved since, so tr(Q_prevᵀ Q) = tr(P_k Q_kᵀ): no copy of the old bases is kept. As in the
        paper it is normalized by the previous rank, so a rank cut alone lowers it (48 → 37 with no
        rotation: 37/48 = 0.77); the rotation's ``alignment`` normalizes the same trace by the new
        rank, so 1 there means the kept directions did not move.
        """
        old_rank = self.rank
        p, s, qh = torch.linalg.svd(self.sigma.detach(), full_matrices=False)
        keep = int((s >= beta * s[0]).sum().item()) if s.numel() else 0
        keep = max(keep, min(min_rank, old_rank))
        p_k, qh_k = p[:, :keep], qh[:keep, :]
        kept = float(torch.trace(p_k @ qh_k).item())
        stability = kept / old_rank if old_rank else 1.0
        alignment = kept / keep if keep else 1.0
        self.U = (self.U @ p_k).contiguous()
        self.Vh = (qh_k @ self.Vh).contiguous()
        # A new Parameter, not new .data in the old one: whatever still holds the old one's gradient
        # accumulator (a DDP reducer, a recorded CUDA graph's backward) would hand the new shape's gradient
        # to a node that expects the old shape. The optimizer takes it in the old one's place
        # (``replace_parameter``, which the OIALR update calls).
        self.sigma = nn.Parameter(torch.diag(s[:keep]).contiguous(), requires_grad=self.sigma.requires_grad)
        return Rotation(old_rank, keep, stability, p_k, qh_k.T, alignment)

    @torch.no_grad()
    def resize_(self, rank: int) -> None:
        """Give U, Vᵀ and Σ the shapes of rank ``rank`` (zeros), e.g. before loading a checkpoint."""
        like = self.sigma
        self.U = like.new_zeros(self.out_features, rank)
        self.Vh = like.new_zeros(rank, self.in_features)
        self.sigma.data = like.new_zeros(rank, rank)
        self.sigma.grad = None

    def parameter_counts(self) -> tuple[int, int, int]:
        """(trainable Σ entries, frozen U+V entries, entries of the dense weight)."""
        r, m, n = self.rank, self.out_features, self.in_features
        return r * r, r * (m + n), m * n

    def extra_repr(self) -> str:
        return f"{self.out_features}x{self.in_features}, rank={self.rank}"


def ceil_layers(fraction: float, layers: int, completed_updates: int) -> int:
    """Layers in the next update: ⌈p·L·(k+1)⌉, at least one, at most L.

    The small tolerance keeps binary rounding (0.1·10·1 = 1.0000000000000002) from adding a layer.
    """
    wanted = math.ceil(fraction * layers * (completed_updates + 1) - 1e-9)
    return max(1, min(layers, wanted))
