"""The fused LayerNorm + modulation (nn/norm_modulate.py) against ATen's two ops, forward and backward, and the
cases that must keep the ATen ops."""

import contextlib

import pytest
import torch

from convdiff.models.dico import DiCoBlock
from convdiff.nn import norm_modulate as fused
from convdiff.nn.modulation import modulate
from convdiff.nn.norms import LayerNorm2d


@pytest.fixture(scope="module", autouse=True)
def native_kernel():
    """scripts/setup.sh builds the kernel; a checkout installed another way builds it here once (about 15 s)."""
    if not fused.native_available():
        fused.build()
    assert fused.native_available()


@pytest.fixture
def native_off():
    with fused.aten_ops():
        yield


def inputs(channels, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, channels, 5, 7, generator=generator).to(memory_format=torch.channels_last)
    shift = torch.randn(3, channels, 1, 1, generator=generator)
    scale = torch.randn(3, channels, 1, 1, generator=generator)
    return x, shift, scale


@pytest.mark.parametrize("channels", [8, 100, 128])  # 100: a tail after the 8-wide vectors
def test_kernel_matches_aten_forward_and_backward(channels):
    norm = LayerNorm2d(channels)
    x, shift, scale = inputs(channels)
    leaves = [t.clone().requires_grad_() for t in (x, shift, scale)]
    reference = [t.clone().requires_grad_() for t in (x, shift, scale)]
    out = fused.norm_modulate(norm, *leaves)
    expected = modulate(norm(reference[0]), reference[1], reference[2])
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, leaves, grad), torch.autograd.grad(expected, reference, grad)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_kernel_differs_from_aten_only_by_rounding():
    """Not the ATen ops in disguise: the results differ, by float32 rounding only."""
    norm = LayerNorm2d(128)
    x, shift, scale = inputs(128, seed=1)
    with torch.no_grad():
        difference = (fused.norm_modulate(norm, x, shift, scale) - modulate(norm(x), shift, scale)).abs().max()
    assert 0 < difference < 1e-5


@pytest.mark.parametrize("case", ["nchw", "affine", "bf16-autocast", "float64", "native-off"])
def test_aten_ops_run_where_the_kernel_does_not_apply(case, request):
    norm = LayerNorm2d(16, affine=case == "affine")
    x, shift, scale = inputs(16)
    if case == "nchw":
        x = x.contiguous()
    if case == "float64":
        x, shift, scale = x.double(), shift.double(), scale.double()
    if case == "native-off":
        request.getfixturevalue("native_off")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "bf16-autocast"):
        got = fused.norm_modulate(norm, x, shift, scale)
        expected = modulate(norm(x), shift, scale)
    assert torch.equal(got, expected)


def test_dico_block_trains_the_same_with_the_kernel():
    """A DiCo block with random (not adaLN-zero) weights: the fused and the ATen paths give the same output and
    gradients up to rounding."""
    torch.manual_seed(0)
    block = DiCoBlock(32).to(memory_format=torch.channels_last)
    for parameter in block.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    x = torch.randn(2, 32, 6, 6).to(memory_format=torch.channels_last).requires_grad_()
    cond = torch.randn(2, 32)
    results = {}
    for native in (False, True):
        block.zero_grad()
        x.grad = None
        with contextlib.nullcontext() if native else fused.aten_ops():
            out = block(x, cond)
        out.square().sum().backward()
        results[native] = (out.detach(), x.grad.clone(), block.modulation.proj.weight.grad.clone())
    for got, want in zip(results[True], results[False]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.equal(results[True][0], results[False][0])  # the kernel did run
