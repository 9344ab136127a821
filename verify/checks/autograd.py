"""autograd: gradients that are known exactly, gradcheck against finite differences, and numerics."""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from verify.checks._common import gpu_unusable_reason
from verify.context import CheckContext
from verify.result import Findings, Outcome

FAULTS = ("broken-grad",)

# float64 on both sides; only the summation order differs between CPU and GPU (~1e-15 relative).
GPU_GRAD_TOLERANCE = 1e-9


class _BrokenAffine(torch.autograd.Function):
    """w*x + b with a wrong gradient for w: what a buggy kernel or custom op looks like."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w, x)
        return w * x + b

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w, x = ctx.saved_tensors
        return grad * x * 2, grad * w, grad


Affine = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _grad(leaf: torch.Tensor) -> torch.Tensor:
    """A leaf's gradient after backward(); None there means autograd lost it: a failure, not a crash."""
    if leaf.grad is None:
        raise RuntimeError("backward() left a leaf without a gradient")
    return leaf.grad


def _affine_for(fault: Optional[str]) -> Affine:
    if fault == "broken-grad":
        return _BrokenAffine.apply
    return lambda w, x, b: w * x + b


def _exact_gradients(found: Findings, affine: Affine) -> None:
    """loss = (w*x + b)^2 at x=3, w=2, b=1: dx = 2*7*2 = 28, dw = 2*7*3 = 42, db = 2*7 = 14, exactly."""
    x, w, b = (torch.tensor(value, dtype=torch.float64, requires_grad=True) for value in (3.0, 2.0, 1.0))
    loss = affine(w, x, b) ** 2
    loss.backward()
    got = {"dx": float(_grad(x)), "dw": float(_grad(w)), "db": float(_grad(b))}
    found.figures["exact_gradients"] = got
    expected = {"dx": 28.0, "dw": 42.0, "db": 14.0}
    wrong = [f"{name}={got[name]:g} (expected {value:g})" for name, value in expected.items() if got[name] != value]
    if wrong:
        found.fail("(w*x+b)^2 at x=3, w=2, b=1 gives wrong gradients: " + ", ".join(wrong))


def _gradchecks(found: Findings, affine: Affine) -> None:
    generator = torch.Generator().manual_seed(0)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_(True)

    cases: List[Tuple[str, Callable[..., torch.Tensor], Tuple[torch.Tensor, ...]]] = [
        ("sin*exp", lambda t: t.sin() * t.exp(), (leaf(5),)),
        ("tanh(a@b)", lambda a, b: torch.tanh(a @ b), (leaf(3, 4), leaf(4, 2))),
        ("log_softmax", lambda z: F.log_softmax(z, dim=-1), (leaf(2, 5),)),
        ("(w*x+b)^2", lambda w, x, b: affine(w, x, b) ** 2, (leaf(3), leaf(3), leaf(3))),
    ]
    passed = []
    for name, function, inputs in cases:
        try:
            ok = torch.autograd.gradcheck(function, inputs, eps=1e-6, atol=1e-5, raise_exception=False)
        except Exception as err:  # gradcheck itself can raise on malformed graphs
            ok = False
            found.figures[f"gradcheck_{name}_error"] = str(err).splitlines()[0]
        if ok:
            passed.append(name)
        else:
            found.fail(f"gradcheck: the analytical gradient of {name} disagrees with finite differences")
    second_order = torch.autograd.gradgradcheck(lambda a, b: torch.tanh(a @ b), (leaf(3, 4), leaf(4, 2)),
                                                raise_exception=False)
    if not second_order:
        found.fail("gradgradcheck: second-order gradients of tanh(a@b) disagree with finite differences")
    found.figures["gradcheck_passed"] = passed


def _numerics(found: Findings) -> None:
    logits = torch.tensor([[1000.0, 999.0, 998.0]], requires_grad=True)
    loss = F.cross_entropy(logits, torch.tensor([0]))
    loss.backward()
    naive = -torch.log(torch.exp(logits.detach()) / torch.exp(logits.detach()).sum())[0, 0]
    found.figures.update({"cross_entropy_at_1000": float(loss), "naive_softmax_log_at_1000": repr(float(naive))})
    if not (torch.isfinite(loss) and torch.isfinite(_grad(logits)).all()):
        found.fail(f"cross_entropy on logits near 1000 is not finite ({float(loss)}): log-sum-exp is unstable")
    if torch.isfinite(naive):
        found.fail("naive softmax-then-log on logits near 1000 stayed finite: exp() does not overflow as IEEE says")


def _graph_semantics(found: Findings) -> None:
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        inside = w * 2
    if inside.requires_grad or not torch.is_grad_enabled():
        found.fail("no_grad: a result computed under torch.no_grad() requires grad, or grad stayed disabled")
    detached = w.detach()
    if detached.requires_grad or detached.data_ptr() != w.data_ptr():
        found.fail("detach: the detached tensor requires grad or does not share storage")
    x = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    (first,) = torch.autograd.grad(x ** 3, x, create_graph=True)
    (second,) = torch.autograd.grad(first, x)
    found.figures["x^3_at_2"] = {"first": float(first), "second": float(second)}
    if float(first) != 12.0 or float(second) != 12.0:
        found.fail(f"d/dx x^3 at 2 = {float(first):g} (expected 12), d2/dx2 = {float(second):g} (expected 12)")


def _gpu_matches_cpu(found: Findings) -> str:
    missing = gpu_unusable_reason()
    if missing:
        found.figures["gpu_vs_cpu"] = f"not run: {missing}"
        return f"GPU vs CPU gradients not compared ({missing})"
    generator = torch.Generator().manual_seed(1)
    weights = [torch.randn(16, 8, generator=generator, dtype=torch.float64),
               torch.randn(4, 16, generator=generator, dtype=torch.float64)]
    data = torch.randn(32, 8, generator=generator, dtype=torch.float64)

    def gradients(device: str) -> List[torch.Tensor]:
        leaves = [w.detach().to(device, copy=True).requires_grad_(True) for w in weights]
        out = torch.tanh(data.to(device) @ leaves[0].T) @ leaves[1].T
        out.pow(2).mean().backward()
        return [_grad(leaf).cpu() for leaf in leaves]

    cpu, gpu = gradients("cpu"), gradients("cuda")
    error = max(float((g - c).abs().max() / c.abs().max()) for g, c in zip(gpu, cpu))
    found.figures["gpu_vs_cpu_rel_error"] = error
    if error > GPU_GRAD_TOLERANCE:
        found.fail(f"float64 gradients on the GPU differ from the CPU by {error:.2e} (tolerance {GPU_GRAD_TOLERANCE:g})")
    return "GPU gradients match the CPU"


def run(ctx: CheckContext) -> Outcome:
    found = Findings()
    affine = _affine_for(ctx.fault)
    _exact_gradients(found, affine)
    _gradchecks(found, affine)
    _numerics(found)
    _graph_semantics(found)
    gpu_note = _gpu_matches_cpu(found)
    found.key_figure = "dx,dw,db=28,42,14" if not found.failed else "wrong gradients"
    return found.outcome(f"gradcheck, exact gradients, stable cross-entropy, no_grad/detach/2nd order; {gpu_note}")
