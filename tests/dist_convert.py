"""Multi-rank checks for tests/test_convert.py, one torchrun launch (4 ranks, gloo):

    torchrun --nproc_per_node N tests/dist_convert.py CASES_JSON

CASES_JSON lists {name, megatron, ids, layouts, save}: a TP=1 Megatron checkpoint, the token ids (a .pt
file) and the [TP, PP] layouts to run (data parallel fills the rest of the N ranks). At each layout the
checkpoint is loaded through dist_checkpointing (resharded from TP=1), run through megatron-core's
pipeline schedule (forward only), and its full-vocabulary logits written beside CASES_JSON as
logits_<name>_tp<T>pp<P>.pt; the pytest side compares them with transformers. With "save": true the
model is also saved at each layout into <name>_tp<T>pp<P>/, for the resharding check back to TP1 x PP1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

def full_logits(model, ids: torch.Tensor) -> torch.Tensor | None:
    """Logits [batch, seq, padded vocab] on the last pipeline stage (gathered over TP); None elsewhere."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    positions = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)

    def step(data_iterator, chunk):
        output = chunk(next(data_iterator), positions, None)

        def collect(output_tensor, non_loss_data=False):
            return gather_from_tensor_model_parallel_region(output_tensor)

        return output, collect

    with torch.no_grad():
        out = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter([ids]), model=[model], num_microbatches=1,
            seq_length=ids.shape[1], micro_batch_size=ids.shape[0], forward_only=True, collect_non_loss_data=True,
        )
    return out[0] if parallel_state.is_pipeline_last_stage() else None


def main() -> None:
    from megatron.core import parallel_state

    from megatron_tibetan.checkpoint_dir import load_model_weights, model_sharded_state, save_iteration
    from megatron_tibetan.distributed import init_parallel
    from megatron_tibetan.models import build_model_from_dir

    cases_file = Path(sys.argv[1])
    work = cases_file.parent
    cases = json.loads(cases_file.read_text())
    layouts = sorted({tuple(layout) for case in cases for layout in case["layouts"]})
    for tp, pp in layouts:
        init_parallel(tp, pp)
        for case in (c for c in cases if [tp, pp] in c["layouts"]):
            model, spec = build_model_from_dir(case["megatron"])
            model.eval()
            load_model_weights(case["megatron"], [model])
            logits = full_logits(model, torch.load(case["ids"]))
            writer = logits is not None and parallel_state.get_data_parallel_rank() == 0 \
                and parallel_state.get_tensor_model_parallel_rank() == 0
            if writer:
                torch.save(logits, work / f"logits_{case['name']}_tp{tp}pp{pp}.pt")
            if case.get("save"):
                save_iteration(work / f"{case['name']}_tp{tp}pp{pp}", 0, model_sharded_state([model]), spec=spec)
            del model
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
