"""``executor.batch`` with the MM-DiT text stream deliberately mishandled, for the tests that
show the equality checks of ``tests/test_executor_mmdit.py`` catch such bugs:

    torchrun --nproc_per_node 2 -m tests.mmdit_mutants OUTDIR 'ARGS' ['ARGS' ...]

Two known failure modes of MM-DiT parallelism are patched in, both at once (each touches only
its own strategy):

- text split across Ulysses ranks: every rank attends to its own share of the text tokens
  only, as when the joint sequence is split evenly and the text part is not exchanged;
- text not forwarded between stages: every PipeFusion stage starts the text stream from the
  prompt embedding itself (as stage 0 does) and ignores the text the stage before sends.
"""

from __future__ import annotations

from executor import inputs, mmdit
from executor.batch import main
from sim.cli import run_main


def _split_text() -> None:
    attend = mmdit.JointAttnProcessor._sequence_parallel

    def split(self, q, k, v, tq, tk, tv):
        share = tk.shape[2] // self.geo.ulysses
        lo = self.geo.u * share
        return attend(self, q, k, v, tq, tk[:, :, lo:lo + share], tv[:, :, lo:lo + share])

    mmdit.JointAttnProcessor._sequence_parallel = split


def _text_not_forwarded() -> None:
    keep = inputs.keep_mmdit_stage
    prepare = mmdit.MMDiTStageExecutor._prepare_inputs
    recv = mmdit.MMDiTStageExecutor._recv

    def keep_embedder(net, *args):
        embedder = net.context_embedder
        keep(net, *args)
        net.context_embedder = embedder

    def own_text(self, prompts):
        first, self.is_first = self.is_first, True  # every stage embeds the prompt itself
        prepare(self, prompts)
        self.is_first = first

    def ignore_text(self, op):
        own = self.text_in
        recv(self, op)
        if op.tag.what == "text":
            self.text_in = self.enc = own

    inputs.keep_mmdit_stage = keep_embedder
    mmdit.MMDiTStageExecutor._prepare_inputs = own_text
    mmdit.MMDiTStageExecutor._recv = ignore_text


if __name__ == "__main__":
    _split_text()
    _text_not_forwarded()
    run_main(main)
