"""validate_request: each rule, with Triton's wording."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

from dynamo_triton.errors import InvalidRequestError
from dynamo_triton.runtime.validation import spec_for, validate_request


def _config(max_batch_size: int = 0) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig(name="m", max_batch_size=max_batch_size)
    config.input.add(name="A", data_type=model_config_pb2.TYPE_INT32, dims=[-1, 2])
    config.input.add(name="S", data_type=model_config_pb2.TYPE_STRING, dims=[1])
    config.input.add(name="OPT", data_type=model_config_pb2.TYPE_FP32, dims=[1], optional=True)
    config.output.add(name="OUT", data_type=model_config_pb2.TYPE_INT32, dims=[-1, 2])
    return config


def _bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


def _request(batch: int | None = None, *, a_shape=(3, 2), a_raw=None, s_raw=None) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="m")
    prefix = [batch] if batch is not None else []
    request.inputs.add(name="A", datatype="INT32", shape=prefix + list(a_shape))
    request.inputs.add(name="S", datatype="BYTES", shape=[*prefix, 1])
    count = int(np.prod(a_shape)) * (batch or 1)
    request.raw_input_contents.append(a_raw if a_raw is not None else np.zeros(count, np.int32).tobytes())
    request.raw_input_contents.append(s_raw if s_raw is not None else _bytes_tensor([b"x"] * (batch or 1)))
    return request


def _fails(request, config, message: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        validate_request(request, config)
    assert caught.value.status == "INVALID_ARGUMENT"
    assert caught.value.message == message


def test_frontend_validation_accepts_valid_requests():
    validate_request(_request(), _config())
    validate_request(_request(batch=4), _config(max_batch_size=4))
    typed = service_pb2.ModelInferRequest(model_name="m")
    a = typed.inputs.add(name="A", datatype="INT32", shape=[1, 2])
    a.contents.int_contents.extend([1, 2])
    s = typed.inputs.add(name="S", datatype="BYTES", shape=[1])
    s.contents.bytes_contents.append(b"hi")
    typed.outputs.add(name="OUT")
    validate_request(typed, _config())


def test_frontend_validation_unknown_and_duplicated_inputs():
    request = _request()
    request.inputs.add(name="X", datatype="INT32", shape=[1])
    _fails(request, _config(), "unexpected inference input 'X' for model 'm'")
    request = _request()
    request.inputs.add(name="A", datatype="INT32", shape=[1, 2])
    _fails(request, _config(), "input 'A' is given more than once for model 'm'")


def test_frontend_validation_missing_required_input():
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="A", datatype="INT32", shape=[1, 2])
    _fails(
        request,
        _config(),
        "expected number of inputs between 2 and 3 but got 1 inputs for model 'm'. Got input(s) ['A'], "
        "but missing required input(s) ['S']. Please provide all required input(s).",
    )


def test_frontend_validation_datatype():
    request = _request()
    request.inputs[0].datatype = "FP32"
    _fails(request, _config(), "inference input 'A' data-type is 'FP32', but model 'm' expects 'INT32'")
    request.inputs[0].datatype = "NOPE"
    with pytest.raises(InvalidRequestError, match="inference input 'A'"):
        validate_request(request, _config())


def test_frontend_validation_shapes_and_batch():
    _fails(
        _request(a_shape=(3, 5), a_raw=b"\0" * 60),
        _config(),
        "unexpected shape for input 'A' for model 'm'. Expected [-1,2], got [3,5].",
    )
    request = _request(a_shape=(2,), a_raw=b"\0" * 8)
    with pytest.raises(InvalidRequestError, match=r"Expected \[-1,-1,2\], got \[2\]. NOTE: Setting a non-zero"):
        validate_request(request, _config(max_batch_size=4))
    _fails(_request(batch=5), _config(max_batch_size=4), "inference request batch-size must be <= 4 for 'm'")
    request = _request(batch=2)
    request.inputs[1].shape[0] = 1
    with pytest.raises(InvalidRequestError, match="batch size does not match"):
        validate_request(request, _config(max_batch_size=4))
    request = _request()
    request.inputs[0].shape[0] = -1
    with pytest.raises(InvalidRequestError, match="All input dimensions should be specified for input 'A'"):
        validate_request(request, _config())


def test_frontend_validation_sizes():
    _fails(
        _request(a_raw=b"\0" * 20),
        _config(),
        "input byte size mismatch for input 'A' for model 'm'. Expected 24, got 20",
    )
    _fails(
        _request(s_raw=_bytes_tensor([b"a", b"b"])),
        _config(),
        "unexpected number of string elements 2 for inference input 'S' for model 'm', expecting 1",
    )
    request = _request()
    del request.raw_input_contents[1]
    with pytest.raises(InvalidRequestError, match="expected 2 raw input contents"):
        validate_request(request, _config())
    typed = service_pb2.ModelInferRequest(model_name="m")
    a = typed.inputs.add(name="A", datatype="INT32", shape=[1, 2])
    a.contents.int_contents.extend([1])
    typed.inputs.add(name="S", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"x")
    _fails(
        typed,
        _config(),
        "unexpected number of INT32 elements for inference input 'A' for model 'm', expecting 2, got 1",
    )


def test_frontend_validation_requested_outputs():
    request = _request()
    request.outputs.add(name="NOPE")
    _fails(request, _config(), "unexpected inference output 'NOPE' for model 'm'")


def test_frontend_validation_spec_is_cached_per_config():
    config = _config()
    assert spec_for(config) is spec_for(config)
    assert spec_for(_config(max_batch_size=2)).max_batch_size == 2
