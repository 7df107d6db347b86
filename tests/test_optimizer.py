"""The training AdamW: torch's fused kernel where it applies, the same updates as the default loop."""

import torch

from convdiff.training.optimizer import adamw, fused_applies


def test_fused_adamw_matches_the_default_loop():
    torch.manual_seed(0)
    fused_model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GELU(), torch.nn.Conv2d(8, 2, 1))
    loop_model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GELU(), torch.nn.Conv2d(8, 2, 1))
    loop_model.load_state_dict(fused_model.state_dict())
    fused = adamw(fused_model.parameters(), lr=1e-2, weight_decay=0.1)
    loop = torch.optim.AdamW(loop_model.parameters(), lr=1e-2, weight_decay=0.1)
    assert fused.defaults["fused"] is True and not loop.defaults["fused"]
    x = torch.randn(4, 3, 9, 9)
    for _ in range(5):
        for model, optimizer in ((fused_model, fused), (loop_model, loop)):
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(fused_model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fused_model[0].weight, torch.nn.Conv2d(3, 8, 3).weight)


def test_fused_only_where_the_kernel_applies():
    assert fused_applies(torch.nn.Linear(2, 2).parameters())
    assert not fused_applies(torch.nn.Linear(2, 2, device="meta").parameters())
    optimizer = adamw(torch.nn.Linear(2, 2, device="meta").parameters(), lr=1e-3)
    assert not optimizer.defaults["fused"]


def test_a_checkpoint_of_the_default_loop_resumes_on_the_loop():
    """Runs started before the fused default resume with the optimizer their checkpoint records (exact resumes)."""
    model = torch.nn.Linear(3, 3)
    old = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3)).sum().backward()
    old.step()
    resumed = adamw(model.parameters(), lr=1e-3)
    resumed.load_state_dict(old.state_dict())
    assert not resumed.param_groups[0]["fused"]
