"""The README's Python example runs and computes what its comments claim."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import funcgrad as fg

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run() -> None:
    """Every ```python block of the README executes, and its results are right."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    hess = namespace["hess"]
    assert hess["w"]["b"].shape == (3, 1, 1)  # type: ignore[index]
    # The per-example gradients average to the batch gradient (the loss is a mean).
    per_example, grads = namespace["per_example"], namespace["grads"]
    mean = fg.tree.map(lambda g: g.mean(0), per_example)
    fg.testing.assert_trees_allclose(mean, grads, rtol=1e-5, atol=1e-6)
    # The gradient agrees with torch.autograd at the parameters before the SGD step.
    old = fg.tree.map(lambda p, g: p + 0.1 * g, namespace["params"], grads)
    leaves = [p.detach().requires_grad_() for p in (old["w"], old["b"])]
    value = namespace["loss"]({"w": leaves[0], "b": leaves[1]}, namespace["x"], namespace["y"])
    ref_w, ref_b = torch.autograd.grad(value, leaves)
    fg.testing.assert_trees_allclose(grads, {"w": ref_w, "b": ref_b}, rtol=1e-4, atol=1e-6)
    # The jitted SGD step from the new parameters: one more step of the same rule.
    params = namespace["params"]
    expected = fg.tree.map(
        lambda p, g: p - 0.1 * g,
        params,
        fg.grad(namespace["loss"])(params, namespace["x"], namespace["y"]),
    )
    fg.testing.assert_trees_allclose(namespace["new_params"], expected, rtol=1e-5, atol=1e-6)
