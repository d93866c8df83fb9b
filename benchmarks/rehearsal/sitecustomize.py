"""The CPU rehearsal's stand-in for CUDA graphs (``REHEARSE=1 bash benchmarks/gpu_table.sh``).

Python imports this module at the start of every process whose path holds this folder; the
rehearsal puts it there for the sweep (and so its runs) and for the speed figures' workers. A GPU
captures each step as CUDA graphs (``graphs.CapturedStep``: one per stage and set of draws, after
warm-up steps); on the CPU no run captures, so the rehearsal would take another path than the GPU
run it rehearses. Here every run captures as on a GPU, with a stand-in graph that keeps
``graphs.CudaGraph``'s contract (static inputs copied in, the step run on them, the first
outputs overwritten on each replay) but replays eagerly: ``graphs.EagerGraph``.
"""

import debiaslab.graphs
import debiaslab.train


def capture_step(cfg, device, method) -> bool:
    """Capture as CUDA's default does (unless the config turns it off), on any device."""
    wanted = cfg.cuda_graph if cfg.cuda_graph is not None else cfg.compile is not False
    return bool(wanted) and method.on_device


debiaslab.graphs.CudaGraph = debiaslab.graphs.EagerGraph
debiaslab.train.capture_step = capture_step
