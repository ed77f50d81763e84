"""Methods that fail on purpose, named in test configs as user classes (``failing_methods:CrashOnce``): a training
job that crashes once (a node lost, a preemption) and one that always crashes (out of memory)."""

from __future__ import annotations

from pathlib import Path

from benchmark.balancers.joint import Joint


class CrashOnce(Joint):
    """Joint training whose first attempt dies after its second epoch's checkpoint would be due; later attempts
    (which resume from the first epoch's checkpoint) run through."""

    paper = "test double: joint training that crashes on its first attempt"

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        marker = Path(f"crashed-once-seed{self.ctx.seed}")
        if epoch == 1 and not marker.exists():
            marker.write_text("crashed\n")
            raise RuntimeError("simulated node failure in epoch 2 (first attempt)")


class OutOfMemory(Joint):
    """Joint training that always runs out of memory in its first step."""

    paper = "test double: a job that always crashes"

    def loss(self, out, y):
        raise RuntimeError("CUDA out of memory (simulated): tried to allocate 80.00 GiB")
