"""A plugin datatype end to end: DYNTRITON_PLUGINS loads it into `dyntriton serve` (frontend + worker processes).

The plugin registers FP8E4M3 carried as UINT8; the `identity_uint8` model declares TYPE_UINT8.
A client sends FP8E4M3 bytes over KServe gRPC (built with the protos: tritonclient's InferInput
refuses numpy dtypes it does not know) and gets the same bytes back; without the plugin the
frontend answers INVALID_ARGUMENT naming the datatypes it knows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import ml_dtypes
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from dynamo_triton.testing.cluster import START_TIMEOUT, Cluster, model_ready, wait_until

pytestmark = pytest.mark.slow

FP8 = np.dtype(ml_dtypes.float8_e4m3fn)
MODEL = "identity_uint8"

PLUGIN = """
    '''Test plugin: FP8E4M3 (ml_dtypes.float8_e4m3fn) carried to Triton as UINT8.'''

    import ml_dtypes

    from dynamo_triton import hookimpl
    from dynamo_triton.dtypes import DType


    @hookimpl
    def dyntriton_register_dtypes(register):
        register(
            "FP8E4M3",
            DType("FP8E4M3", ml_dtypes.float8_e4m3fn, "TYPE_UINT8", "Float8E4M3", 1, None, carrier="UINT8"),
        )
"""


def load_fp8_plugin(cluster: Cluster, folder: Path) -> None:
    """Put the plugin module on the processes' PYTHONPATH and name it in DYNTRITON_PLUGINS."""
    folder.mkdir()
    (folder / "e2e_fp8_dtype.py").write_text(textwrap.dedent(PLUGIN))
    path = [str(folder), *filter(None, [cluster.env.get("PYTHONPATH")])]
    cluster.env["PYTHONPATH"] = os.pathsep.join(path)
    cluster.env["DYNTRITON_PLUGINS"] = "e2e_fp8_dtype"


def serve(cluster: Cluster) -> str:
    cluster.env["COLUMNS"] = "300"  # serve's summary is printed by rich: no wrapping
    proc, url = cluster.serve(MODEL)
    wait_until(lambda: model_ready(url, MODEL), START_TIMEOUT, f"{MODEL} to be ready", cluster)
    wait_until(lambda: "1 worker process(es)" in proc.output(), START_TIMEOUT, "serve's summary", cluster)
    assert proc.alive()
    return url


def infer(url: str, datatype: str, raw: bytes, count: int) -> service_pb2.ModelInferResponse:
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="IN", datatype=datatype, shape=[count])
    request.outputs.add(name="OUT")
    request.raw_input_contents.append(raw)
    with grpc.insecure_channel(url) as channel:
        return service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)


def dyntriton_infer(cluster: Cluster, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "dynamo_triton", "infer", "--url", url, "--model", MODEL, *args]
    return subprocess.run(command, capture_output=True, text=True, env=cluster.env, timeout=60)


def test_a_plugin_datatype_travels_through_serve_on_its_carrier(cluster: Cluster, tmp_path: Path) -> None:
    load_fp8_plugin(cluster, tmp_path / "plugins")
    url = serve(cluster)

    values = np.array([0.5, -2.0, 448.0, -448.0, 0.001953125, 0.0, -0.0, 1.125], dtype=FP8)
    sent = values.tobytes()
    response = infer(url, "FP8E4M3", sent, values.size)
    [output] = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("OUT", "UINT8", [values.size])
    assert response.raw_output_contents[0] == sent, "the bytes come back untouched"
    np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], FP8), values)

    with pytest.raises(grpc.RpcError) as caught:  # a real mismatch keeps Triton's wording
        infer(url, "FP16", np.zeros(2, np.float16).tobytes(), 2)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "data-type is 'FP16', but model 'identity_uint8' expects 'UINT8'" in (caught.value.details() or "")

    result = dyntriton_infer(cluster, url, "--datatype", "FP8E4M3", "--shape", "16", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["inputs"] == {"IN": "FP8E4M3"} and summary["verified"] is True
    assert summary["outputs"]["OUT"] == {"shape": [16], "dtype": "uint8", "datatype": "UINT8"}


def test_without_the_plugin_the_datatype_is_invalid_and_the_known_ones_are_listed(cluster: Cluster) -> None:
    url = serve(cluster)
    with pytest.raises(grpc.RpcError) as caught:
        infer(url, "FP8E4M3", b"\x38\x40", 2)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert "inference input 'IN': unknown datatype 'FP8E4M3'; available: BF16, BOOL, BYTES" in details
    assert "UINT8" in details

    result = dyntriton_infer(cluster, url, "--datatype", "FP8E4M3")
    assert result.returncode == 2 and "unknown datatype 'FP8E4M3'" in result.stderr
    assert "DYNTRITON_PLUGINS" in result.stderr
