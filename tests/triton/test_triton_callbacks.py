"""Triton's callbacks: the C completions library (no GIL on Triton's threads) and the ctypes fallback agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCENARIO = textwrap.dedent(
    """
    import asyncio, hashlib, json, os, sys, time
    import numpy as np
    import tritonclient.utils.shared_memory as shm
    from dynamo_triton.runtime.shared_memory import host_identity
    from dynamo_triton.runtime.shared_memory_requests import LOCAL_HOST, LOCAL_KEY, LOCAL_OFFSET, LOCAL_SIZE
    from tritonclient.grpc import service_pb2
    from dynamo_triton.backend import BackendSettings
    from dyntriton_backend_triton.backend import TritonBackend

    def request(model, name, values, request_id):
        message = service_pb2.ModelInferRequest(model_name=model, id=request_id)
        message.inputs.add(name=name, datatype="INT32", shape=list(values.shape))
        message.raw_input_contents.append(values.tobytes())
        return message

    async def collect(backend, message):
        return [r async for r in backend.infer(message)]

    async def main(c_callbacks):
        backend = TritonBackend(BackendSettings("model_repo", extra={"c_callbacks": c_callbacks}))
        await backend.start()
        for model in ("identity", "repeat", "classify"):
            await backend.load_model(model)
        used_c = backend.server._completions is not None
        base = np.arange(16, dtype=np.int32).reshape(1, 16)
        small = [request("identity", "INPUT0", base + i, str(i)) for i in range(50)]
        big = request("identity", "INPUT0", np.arange(1 << 20, dtype=np.int32).reshape(1, -1), "big")
        answers = await asyncio.gather(*(collect(backend, m) for m in small + [big]))
        streamed = [r async for r in backend.infer(request("repeat", "IN", np.arange(4, dtype=np.int32), "s"))]
        # Classified outputs are replaced by their top-K while Triton still holds their buffers.
        classified = []
        for i in range(100):
            message = service_pb2.ModelInferRequest(model_name="classify", id=f"c{i}")
            message.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 5])
            message.raw_input_contents.append(np.array([[0.25, 4, 4, -1, i]], np.float32).tobytes())
            for name in ("FP32", "INT32", "FP32_LABELLED", "INT32_LABELLED"):
                message.outputs.add(name=name).parameters["classification"].int64_param = 1 + i % 30
            classified += await collect(backend, message)
        # A frontend of this host hands a region by reference: Triton reads the input from it and writes
        # the output into it (the allocator returns the region's pointer); nothing stays mapped afterwards.
        key = f"/dt_callbacks_{os.getpid()}"
        region = shm.create_shared_memory_region("r", key, 128)
        shm.set_shared_memory_region(region, [base])

        def mappings():
            with open("/proc/self/maps") as maps:
                return sum(key in line for line in maps)

        own = mappings()  # the client's own (this process is the client too)

        def by_reference(output_size):
            message = service_pb2.ModelInferRequest(model_name="identity", id="shm")
            tensor = message.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
            output = message.outputs.add(name="OUTPUT0")
            for item, offset, size in ((tensor, 0, 64), (output, 64, output_size)):
                item.parameters[LOCAL_KEY].string_param = key
                item.parameters[LOCAL_OFFSET].int64_param = offset
                item.parameters[LOCAL_SIZE].int64_param = size
            message.raw_input_contents.append(b"")
            message.parameters[LOCAL_HOST].string_param = host_identity()
            return message

        in_region = await collect(backend, by_reference(64))
        written = shm.get_contents_as_numpy(region, np.int32, [32])[16:].tolist()
        try:
            await collect(backend, by_reference(32))
            too_small = ""
        except Exception as exc:
            too_small = str(exc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the request's release may still be on its way
            mapped = mappings() - own
            if not mapped:
                break
            await asyncio.sleep(0.01)
        shm.destroy_shared_memory_region(region)
        digest = hashlib.sha256()
        for response in [a for answer in answers for a in answer] + streamed + classified + in_region:
            digest.update(response.SerializeToString())
        await backend.stop()
        print(json.dumps({
            "used_c": used_c, "digest": digest.hexdigest(), "streamed": len(streamed), "written": written,
            "contents": [list(r.raw_output_contents) == [b""] for r in in_region], "too_small": too_small,
            "mapped": mapped,
        }))

    asyncio.run(main(sys.argv[1] == "c"))
    """
)


def run(mode: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", SCENARIO, mode], capture_output=True, text=True, timeout=120, cwd=os.getcwd()
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_c_and_ctypes_callbacks_give_the_same_answers(require_triton: None) -> None:
    with_c, with_ctypes = run("c"), run("ctypes")
    if not with_c["used_c"]:
        if os.environ.get("CI") == "true":
            pytest.fail("the C completions library was not built (setup.py's optional extension)")
        pytest.skip("the C completions library is not built here (no C compiler at install time)")
    assert not with_ctypes["used_c"]
    assert with_c["digest"] == with_ctypes["digest"] and with_c["streamed"] == with_ctypes["streamed"] == 4
    for answer in (with_c, with_ctypes):
        assert answer["written"] == list(range(16))  # the output is in the region...
        assert answer["contents"] == [True]  # ...and the response has its metadata, empty contents
        assert answer["too_small"].endswith(
            "shared memory size specified with the request for output 'OUTPUT0' (32 bytes) should be at least "
            "64 bytes to hold the results"
        ), answer["too_small"]
        assert answer["mapped"] == 0
