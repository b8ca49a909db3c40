"""A simulated disconnect for in-process tests: an exception raised at the end of a given step.

    from disconnect import Disconnect, DisconnectAfterStep
    with pytest.raises(Disconnect):
        train_shard(cfg, split, 0, out, callbacks=[DisconnectAfterStep(3)])

It ends the process's training right after the step, before that step's log line and save, as
a dropped runtime would. (tests/pause_runner.py does the same to a real process, with SIGKILL.)
"""

from transformers import TrainerCallback


class Disconnect(Exception):
    pass


class DisconnectAfterStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Disconnect(f"simulated disconnect after step {self.step}")
