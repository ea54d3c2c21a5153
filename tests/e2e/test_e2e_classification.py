"""Classification through `dyntriton serve` answers exactly what the real `tritonserver` answers."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from dynamo_triton.testing.cluster import MODEL_REPO, START_TIMEOUT, Cluster, Proc, model_ready, wait_until
from dynamo_triton.testing.tritonserver import TritonDirect

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("triton_direct", [(MODEL_REPO, ("classify",))], indirect=True, ids=["classify"]),
]

OUTPUTS = ("FP32", "INT32", "FP32_LABELLED", "INT32_LABELLED")

#: Inputs of classify (FP32 [batch, n]), cast by the model to each output's type.
rng = np.random.default_rng(2024)
INPUTS = {
    # 23 classes (past the 16 where std::sort stops being stable), ties in the top places and
    # INT32 ties made by the cast; 20 labels, index 2 an empty line, 20-22 past the file.
    "ties": np.array(
        [
            [0.5, 3.0, 2.0, 2.5, 3.0, 3.0] + [0.0] * 16 + [1.0],
            [1.0] * 23,
        ],
        np.float32,
    ),
    "random": rng.integers(-3, 4, (3, 40)).astype(np.float32) / 2,
    "few classes": np.array([[0.25, 4.0, 4.0, -1.0, 4.0]], np.float32),
}


@pytest.fixture(scope="module")
def serve_started(
    tmp_path_factory: pytest.TempPathFactory, require_triton: None
) -> Iterator[tuple[Proc, str, Cluster]]:
    """`dyntriton serve --model classify`, started (not yet waited for) so it boots while tritonserver does."""
    tmp = tmp_path_factory.mktemp("serve")
    env = {**os.environ, "DYN_FILE_KV": str(tmp / "kv"), "DYN_LOG": "info"}
    env.pop("DYN_STORE_KV", None)
    cluster = Cluster(tmp, env=env)
    proc, url = cluster.serve("classify")
    try:
        yield proc, url, cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def servers(
    serve_started: tuple[Proc, str, Cluster], triton_direct: TritonDirect
) -> Iterator[dict[str, grpcclient.InferenceServerClient]]:
    """gRPC clients of dyntriton and of tritonserver, both serving model_repo's classify."""
    proc, url, cluster = serve_started
    wait_until(lambda: model_ready(url, "classify"), START_TIMEOUT, "classify through dyntriton serve", cluster)
    clients = {
        "dyntriton": grpcclient.InferenceServerClient(url),
        "triton": grpcclient.InferenceServerClient(triton_direct.grpc_url),
    }
    yield clients
    for client in clients.values():
        client.close()
    assert proc.alive(), proc.output()[-4000:]


def infer(
    client: grpcclient.InferenceServerClient, values: np.ndarray, outputs: list[grpcclient.InferRequestedOutput]
) -> grpcclient.InferResult:
    item = grpcclient.InferInput("INPUT0", list(values.shape), "FP32")
    item.set_data_from_numpy(values)
    return client.infer("classify", [item], outputs=outputs)


def answers(result: grpcclient.InferResult) -> dict[str, tuple[str, list[int], bytes]]:
    """Each output of a response as (datatype, shape, raw bytes)."""
    response = result.get_response()
    return {
        tensor.name: (tensor.datatype, list(tensor.shape), raw)
        for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


@pytest.mark.parametrize("k", [1, 3, 30])
@pytest.mark.parametrize("case", list(INPUTS))
def test_classifications_equal_tritonservers(servers, case: str, k: int) -> None:
    values = INPUTS[case]
    outputs = [grpcclient.InferRequestedOutput(name, class_count=k) for name in OUTPUTS]
    outputs.append(grpcclient.InferRequestedOutput("FP16"))  # not classified: the raw tensor, next to the others
    ours, theirs = (answers(infer(servers[side], values, outputs)) for side in ("dyntriton", "triton"))
    assert ours == theirs
    for name in OUTPUTS:
        datatype, shape, _ = theirs[name]
        assert datatype == "BYTES" and shape == [values.shape[0], min(k, values.shape[1])]
    assert theirs["FP16"][0] == "FP16"


def test_labels_come_from_the_label_file(servers) -> None:
    # A sanity check of what the equality above covers: labels after the index where labels.txt has one.
    result = infer(servers["dyntriton"], INPUTS["few classes"], [grpcclient.InferRequestedOutput("INT32_LABELLED", 2)])
    assert result.as_numpy("INT32_LABELLED").tolist() == [[b"4:1:one", b"4:2"]]


def classification_error(client: grpcclient.InferenceServerClient, name: str, k: int) -> InferenceServerException:
    output = grpcclient.InferRequestedOutput(name)
    output._output.parameters["classification"].int64_param = k  # class_count=0 would send no parameter
    with pytest.raises(InferenceServerException) as info:
        infer(client, INPUTS["few classes"], [output])
    return info.value


@pytest.mark.parametrize(
    ("name", "k", "text"),
    [
        ("INT32", 0, "invalid value for 'classification' parameter"),
        ("FP32", -3, "invalid value for 'classification' parameter"),
        ("FP16", 2, "class result not available for output due to unsupported type 'FP16'"),
    ],
)
def test_errors_have_tritonservers_status(servers, name: str, k: int, text: str) -> None:
    ours, theirs = (classification_error(servers[side], name, k) for side in ("dyntriton", "triton"))
    assert ours.status() == theirs.status() == "StatusCode.INVALID_ARGUMENT"
    assert text in ours.message() and text in theirs.message()
    # and the server answers the next request normally
    result = infer(servers["dyntriton"], INPUTS["few classes"], [grpcclient.InferRequestedOutput("INT32", 1)])
    assert result.as_numpy("INT32").tolist() == [[b"4:1"]]
