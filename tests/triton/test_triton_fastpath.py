"""The worker's C fast path (fastpath.py, dt_parse/dt_submit in _completions.c) answers exactly as the
general path does: the same serialized requests through both, byte-for-byte equal answers and errors;
cancel reaches Triton; many concurrent requests; no leak over 10k requests (RSS and buffers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCENARIO = textwrap.dedent(
    """
    import asyncio, hashlib, json, sys, time
    import numpy as np
    from tritonclient.grpc import service_pb2
    from dynamo_triton.backend import BackendSettings
    from dynamo_triton.runtime.pipeline import parse_infer_request
    from dynamo_triton.errors import DyntritonError
    from dyntriton_backend_triton.backend import TritonBackend

    def message(model, inputs, *, request_id="", version="", outputs=(), raw=True):
        m = service_pb2.ModelInferRequest(model_name=model, id=request_id, model_version=version)
        for name, datatype, array in inputs:
            m.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
            m.raw_input_contents.append(array.tobytes())
        for name in outputs:
            m.outputs.add(name=name)
        return m.SerializeToString()

    def rss_kib():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))

    async def main(fast_path):
        backend = TritonBackend(BackendSettings("model_repo", extra={"fast_path": fast_path}))
        await backend.start()
        for model in ("identity", "add_sub", "identity_multi", "identity_uint8", "delay", "repeat"):
            await backend.load_model(model)
        used_fast = backend.server.fast is not None
        took_fast = 0

        async def answer(payload):
            nonlocal took_fast
            try:
                fast = backend.infer_wire(payload)
                if fast is not None:
                    took_fast += 1
                    responses = await fast[1]
                else:
                    request, raw = parse_infer_request(payload)
                    responses = [r async for r in backend.infer_serialized(request, raw)]
                return ["ok", [b"".join(bytes(p) for p in parts).hex() for parts in responses]]
            except DyntritonError as exc:
                return ["error", type(exc).__name__, exc.status, str(exc)]

        i32 = lambda n, start=0: np.arange(start, start + n, dtype=np.int32).reshape(1, n)
        f32 = np.array([[1, 2, 3, 4]], np.float32)
        strings = np.array([b"a", b"", b"hello world"], dtype=np.object_)
        bytes_raw = b"".join(len(s).to_bytes(4, "little") + s for s in strings)

        class Raw:  # a BYTES tensor's serialized form
            shape = (3,)
            def tobytes(self):
                return bytes_raw

        multi = [
            ("FP32_IN", "FP32", np.array([1.5, -2], np.float32)),
            ("FP16_IN", "FP16", np.array([1, 2], np.float16)),
            ("BF16_IN", "BF16", np.array([1, 2], np.uint16)),
            ("INT64_IN", "INT64", np.array([-5, 1 << 40], np.int64)),
            ("BOOL_IN", "BOOL", np.array([True, False])),
            ("BYTES_IN", "BYTES", Raw()),
        ]
        cases = [
            message("identity", [("INPUT0", "INT32", i32(16))]),
            message("identity", [("INPUT0", "INT32", i32(16))], request_id="my-id", version="1"),
            message("identity", [("INPUT0", "INT32", i32(1 << 18))], outputs=["OUTPUT0"]),
            message("identity", [("INPUT0", "INT32", i32(0))]),
            message("add_sub", [("INPUT0", "FP32", f32), ("INPUT1", "FP32", f32 * 2)], outputs=["OUTPUT1"]),
            message("add_sub", [("INPUT0", "FP32", f32), ("INPUT1", "FP32", f32 * 2)]),
            message("identity_multi", multi),
            message("identity_uint8", [("IN", "UINT8", np.arange(7, dtype=np.uint8))], request_id="u8"),
            # errors: each as the general path answers it
            message("identity", [("WRONG", "INT32", i32(16))]),
            message("identity", [("INPUT0", "FP32", i32(16).astype(np.float32))]),
            message("identity", [("INPUT0", "INT32", i32(16))], version="7"),
            message("identity", [("INPUT0", "INT32", i32(16))], version="x"),
            message("identity", [("INPUT0", "INT32", i32(16))], outputs=["NOPE"]),
            message("identity", [("INPUT0", "INT32", i32(16)), ("INPUT0", "INT32", i32(16))]),
            message("nosuchmodel", [("INPUT0", "INT32", i32(16))]),
            message("add_sub", [("INPUT0", "FP32", f32)]),
            message("repeat", [("IN", "INT32", np.arange(3, dtype=np.int32))]),  # decoupled: general path
            b"\\x0a\\x03abc\\x2a\\x00",  # an input with no name
            b"garbage\\xff",
        ]
        # a raw size that does not match the shape, and one raw content missing
        wrong = service_pb2.ModelInferRequest.FromString(cases[0])
        wrong.raw_input_contents[0] = b"\\x00" * 60
        cases.append(wrong.SerializeToString())
        missing = service_pb2.ModelInferRequest.FromString(cases[0])
        del missing.raw_input_contents[:]
        cases.append(missing.SerializeToString())
        cases.append(message("identity", [("N" * 5000, "INT32", i32(16))]))  # a name too long for the C path
        answers = [await answer(case) for case in cases]
        # many at once
        many = [message("identity", [("INPUT0", "INT32", i32(16, k))], request_id=str(k)) for k in range(300)]
        concurrent = await asyncio.gather(*(answer(m) for m in many))
        digest = hashlib.sha256(json.dumps([answers, concurrent]).encode()).hexdigest()

        # cancel: a request running in the model (delay 2 s) is cancelled; Triton answers CANCELLED
        # on the general path; on both the request is released soon (nothing left in flight).
        slow = message("delay", [("INPUT0", "INT32", i32(4)[0]), ("DELAY_MS", "UINT32", np.array([2000], np.uint32))])
        task = asyncio.ensure_future(answer(slow))
        await asyncio.sleep(0.3)  # not a synchronisation: the cancel is valid at any moment
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        # a cancel that reaches Triton while the answer is awaited: Triton's error response is the answer
        cancelled = None
        if backend.server.fast is not None:
            pending = backend.infer_wire(slow)
            backend.server.fast.cancel(max(backend.server.fast._calls))
            try:
                await pending[1]
            except DyntritonError as exc:
                cancelled = [type(exc).__name__, exc.status, str(exc)]
        deadline = time.monotonic() + 30
        while backend.server.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        released = backend.server.in_flight == 0

        # no leak: RSS after 10k more requests stays near RSS after the first 2k
        small = message("identity", [("INPUT0", "INT32", i32(16))])
        big = message("identity", [("INPUT0", "INT32", i32(1 << 16))])

        async def burst(count):
            for start in range(0, count, 100):
                await asyncio.gather(*(answer(small if k % 10 else big) for k in range(100)))

        await burst(2000)
        before = rss_kib()
        await burst(10000)
        growth = rss_kib() - before
        while backend.server.in_flight and time.monotonic() < deadline + 30:
            await asyncio.sleep(0.01)
        await backend.stop()
        print(json.dumps({
            "used_fast": used_fast, "took_fast": took_fast, "digest": digest, "answers": answers,
            "released": released, "growth_kib": growth, "cancelled": cancelled,
        }))

    asyncio.run(main(sys.argv[1] == "fast"))
    """
)


def run(mode: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", SCENARIO, mode], capture_output=True, text=True, timeout=600, cwd=os.getcwd()
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_fast_path_answers_as_the_general_path(require_triton: None) -> None:
    fast, general = run("fast"), run("general")
    if not fast["used_fast"]:
        if os.environ.get("CI") == "true":
            pytest.fail("the C completions library was not built (setup.py's optional extension)")
        pytest.skip("the C completions library is not built here (no C compiler at install time)")
    assert general["took_fast"] == 0 and fast["took_fast"] > 10000
    for mine, theirs in zip(fast["answers"], general["answers"], strict=True):
        assert mine == theirs
    assert fast["digest"] == general["digest"]
    # the plain cases answered, the error cases did not
    assert [answer[0] for answer in fast["answers"][:8]] == ["ok"] * 8
    assert all(answer[0] == "error" for answer in fast["answers"][8:16])
    assert fast["cancelled"] is not None and fast["cancelled"][1] == "CANCELLED", fast["cancelled"]
    for answer in (fast, general):
        assert answer["released"]
        assert answer["growth_kib"] < 20 * 1024, answer["growth_kib"]  # 10k requests, 1k of them 256 KiB
