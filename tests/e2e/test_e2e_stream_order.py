"""ModelStreamInfer through `serve`, with tritonclient's stream API: answers in request order, as Triton."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from dynamo_triton.testing.cluster import START_TIMEOUT, Cluster, model_ready, wait_until

pytestmark = pytest.mark.slow


def test_alternating_good_and_bad_requests_are_answered_in_order(cluster: Cluster) -> None:
    _, url = cluster.serve("identity", extra=("--workers", "2"))
    wait_until(lambda: model_ready(url, "identity"), START_TIMEOUT, "identity to be ready", cluster)
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    count = 200
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for index in range(count):
            if index % 2:  # FP32 for an INT32 input: refused by validation, at once
                tensor = grpcclient.InferInput("INPUT0", [1, 4], "FP32")
                tensor.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
            else:  # runs on a worker (a round trip through Triton's python backend)
                tensor = grpcclient.InferInput("INPUT0", [1, 4], "INT32")
                tensor.set_data_from_numpy(np.full((1, 4), index, dtype=np.int32))
            client.async_stream_infer("identity", [tensor], request_id=str(index))
        received = [answers.get(timeout=60) for _ in range(count)]
    finally:
        client.stop_stream()
        client.close()
    for index, (result, error) in enumerate(received):
        if index % 2:
            assert result is None and "data-type is 'FP32'" in str(error), (index, error)
        else:
            assert error is None, (index, error)
            assert result.get_response().id == str(index)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 4), index, dtype=np.int32))
