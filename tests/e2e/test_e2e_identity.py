"""The frontend answers ServerMetadata as the Triton it fronts, on gRPC and HTTP alike."""

from __future__ import annotations

import json

import pytest
import tritonclient.grpc as grpcclient

from dynamo_triton.runtime.identity import EXTENSIONS, dyntriton_version
from dynamo_triton.testing.cluster import MODEL_REPO, START_TIMEOUT, Cluster, http_get, model_ready, wait_until
from dynamo_triton.testing.tritonserver import TritonDirect

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("triton_direct", [(MODEL_REPO, ("identity",))], indirect=True)
def test_server_metadata_is_tritons_name_and_version(cluster: Cluster, triton_direct: TritonDirect) -> None:
    proc, url = cluster.serve("identity", extra=("--server-name", "triton"))
    http_port = int(proc.argv[proc.argv.index("--http-port") + 1])
    wait_until(lambda: model_ready(url, "identity"), START_TIMEOUT, "identity to be ready", cluster)

    ours, theirs = grpcclient.InferenceServerClient(url), grpcclient.InferenceServerClient(triton_direct.grpc_url)
    try:
        metadata, triton = ours.get_server_metadata(), theirs.get_server_metadata()
    finally:
        ours.close()
        theirs.close()
    # What Triton's simple_grpc_health_metadata example checks, and what tools read.
    assert metadata.name == triton.name == "triton"
    assert metadata.version == triton.version
    assert list(metadata.extensions) == list(EXTENSIONS)
    assert set(metadata.extensions) <= set(triton.extensions)  # nothing Triton itself would not claim

    status, body = http_get(http_port, "/v2")
    assert status == 200
    answer = json.loads(body)
    assert answer["name"] == "triton" and answer["version"] == triton.version
    assert answer["extensions"] == list(EXTENSIONS)  # identical on both protocols
    assert answer["server"]["version"] == dyntriton_version()
