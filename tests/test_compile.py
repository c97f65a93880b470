"""torch.compile with dynamic shapes: once the six kinds of call have been seen (one image or
several; the merged pass, the pixel pass, or both as one batch), new image sizes and batch sizes
compile no new graph.
The eager backend counts the graphs Dynamo makes (no compiler needed on the CPU)."""

from __future__ import annotations

import pytest
import torch

from pisa_core.inference.pipeline import PiSAPipeline

pytestmark = pytest.mark.skipif(not hasattr(torch.nn.Module, "compile"), reason="nn.Module.compile needs torch 2.2")

KINDS = [(batch, 48, 40, *lambdas) for batch in (1, 2) for lambdas in ((1.0, 1.0), (1.0, 0.0), (0.8, 1.2))]
# new sizes (square and not) and batch sizes; all above the CPU convolution's small-input heuristics
NEW = [(1, 56, 44, 1.0, 1.0), (3, 52, 60, 0.8, 1.2), (1, 64, 52, 0.5, 1.5), (4, 44, 52, 1.0, 0.0), (1, 48, 48, 1.0, 1.0)]


def test_mixed_sizes_and_batches_stay_within_the_first_graphs(model_dir, pipe):
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    compiled = PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl", device="cpu",
                                       dtype="fp32", compile=counting_backend)

    def run(calls):
        for batch, h, w, lambda_pix, lambda_sem in calls:
            compiled(torch.rand(batch, h, w, 3), lambda_pix=lambda_pix, lambda_sem=lambda_sem, process_size=0)

    run(KINDS)
    first = len(graphs)
    # encoder and decoder: one and several images; UNet: those × (merged, pixel, both passes)
    assert 3 <= first <= 10, first
    run(NEW)
    assert len(graphs) == first
    # the compiled side branch (whole batch, out of place) gives what the eager one (in place) gives
    image = torch.rand(2, 48, 40, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(compiled(image, lambda_pix=0.8, lambda_sem=1.2, process_size=0),
                               pipe(image, lambda_pix=0.8, lambda_sem=1.2, process_size=0), rtol=1e-5, atol=1e-5)
